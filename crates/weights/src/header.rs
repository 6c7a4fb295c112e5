//! The safetensors header, read and checked before a byte of device memory is allocated: every
//! tensor's dtype is one baton can hold, its byte range matches its shape, lies inside the file
//! and overlaps no other. A file that lies about its offsets is refused here, with the tensor named.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::WeightsError;

/// The largest header the format allows (100 MB, as the reference implementation).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor of the file: where its bytes are, relative to the start of the data region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// A checked safetensors file: its tensors sorted by offset, and where the data region begins.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub tensors: Vec<TensorEntry>,
    /// Offset of the data region in the file (8 + header length).
    pub data_offset: u64,
    pub file_len: u64,
}

impl Header {
    /// Bytes of tensor data (what a load moves).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorEntry::bytes).sum()
    }

    /// Reads and checks the header of `path`.
    pub fn read(path: &Path) -> Result<Header, WeightsError> {
        let file = File::open(path).map_err(|source| WeightsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file_len(path, &file)?;
        let bad = |why: String| WeightsError::BadHeader {
            path: path.to_path_buf(),
            why,
        };
        if file_len < 8 {
            return Err(bad(format!(
                "the file has {file_len} bytes, fewer than the 8 of a header length; it is truncated or not safetensors"
            )));
        }
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)
            .map_err(|e| bad(format!("cannot read the header length: {e}")))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(bad(format!(
                "the header claims {header_len} bytes but the file has {file_len}; it is truncated or not safetensors"
            )));
        }
        let mut text = vec![0u8; header_len as usize];
        file.read_exact_at(&mut text, 8)
            .map_err(|e| bad(format!("cannot read the header: {e}")))?;
        let json: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("the header is not JSON ({e})")))?;
        let object = json
            .as_object()
            .ok_or_else(|| bad("the header is not a JSON object".into()))?;
        let data_offset = 8 + header_len;
        let data_len = file_len - data_offset;
        let mut tensors = Vec::with_capacity(object.len());
        for (name, info) in object {
            if name == "__metadata__" {
                continue;
            }
            tensors.push(entry(path, name, info, data_len)?);
        }
        sort_disjoint(path, &mut tensors)?;
        Ok(Header {
            path: path.to_path_buf(),
            tensors,
            data_offset,
            file_len,
        })
    }
}

/// The length of `file` (opened from `path`).
pub(crate) fn file_len(path: &Path, file: &File) -> Result<u64, WeightsError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| WeightsError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Sorts `tensors` by offset and refuses two whose bytes overlap (safetensors and GGUF alike:
/// the lanes write every tensor's bytes once, so no two may claim the same bytes).
pub(crate) fn sort_disjoint(path: &Path, tensors: &mut [TensorEntry]) -> Result<(), WeightsError> {
    tensors.sort_by_key(|t| (t.start, t.end));
    for pair in tensors.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(WeightsError::BadOffsets {
                path: path.to_path_buf(),
                tensor: pair[1].name.clone(),
                why: format!(
                    "its bytes {}..{} overlap those of '{}' ({}..{})",
                    pair[1].start, pair[1].end, pair[0].name, pair[0].start, pair[0].end
                ),
            });
        }
    }
    Ok(())
}

fn entry(
    path: &Path,
    name: &str,
    info: &serde_json::Value,
    data_len: u64,
) -> Result<TensorEntry, WeightsError> {
    let lie = |why: String| WeightsError::BadOffsets {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        why,
    };
    let dtype_name = info["dtype"]
        .as_str()
        .ok_or_else(|| lie("it has no dtype".into()))?;
    let dtype = dtype(dtype_name).ok_or_else(|| WeightsError::UnsupportedDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: dtype_name.to_string(),
    })?;
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        })
        .ok_or_else(|| lie("its shape is not a list of sizes".into()))?;
    let offsets: Option<Vec<u64>> = info["data_offsets"]
        .as_array()
        .and_then(|o| o.iter().map(serde_json::Value::as_u64).collect());
    let [start, end] = offsets.as_deref().unwrap_or_default() else {
        return Err(lie("its data_offsets are not [start, end]".into()));
    };
    let (start, end) = (*start, *end);
    let elements = shape_elements(&shape).ok_or_else(|| lie("its shape overflows".into()))?;
    let expected = elements
        .checked_mul(dtype.size_in_bytes() as u64)
        .ok_or_else(|| lie("its shape overflows".into()))?;
    if start > end {
        return Err(lie(format!(
            "its data_offsets run backwards ({start} > {end})"
        )));
    }
    if end - start != expected {
        return Err(lie(format!(
            "its data_offsets span {} bytes but a {dtype_name} tensor of shape {shape:?} has {expected}",
            end - start
        )));
    }
    if end > data_len {
        return Err(lie(format!(
            "its bytes end at {end} but the file's data region has only {data_len}: the file is truncated"
        )));
    }
    Ok(TensorEntry {
        name: name.to_string(),
        dtype,
        shape,
        start,
        end,
    })
}

fn shape_elements(shape: &[usize]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))
}

/// The safetensors dtypes candle holds on every device.
fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I16" => DType::I16,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "BF16" => DType::BF16,
        "F16" => DType::F16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

/// The safetensors name of a dtype this loader reads.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        _ => "unsupported",
    }
}
