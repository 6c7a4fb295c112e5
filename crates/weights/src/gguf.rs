//! GGUF files through the same lanes as safetensors: the quantized blocks go to the device as
//! they lie in the file (no dequantisation, no repacking), each tensor into the padded buffer
//! candle's quantized kernels expect, and come out as candle `QTensor`s.
//!
//! candle's own path (`Content::tensor`) reads every tensor into a fresh host vector and copies
//! it from there, pageable, one tensor after the other; here the bytes take the lanes' pinned
//! buffers and streams, like every other weight baton loads.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};

use crate::header::{Header, TensorEntry, file_len, sort_disjoint};
use crate::{LoadOptions, LoadReport, PathTimes, WeightsError, pump};
use baton_base::page_cache;

/// A GGUF file's metadata and its tensors, loaded.
pub struct GgufLoaded {
    /// The file's header as candle reads it: metadata, tensor infos, data offset.
    pub content: Content,
    pub tensors: HashMap<String, QTensor>,
    pub report: LoadReport,
}

/// One tensor's quantized layout: its block type and its shape in elements.
#[derive(Debug, Clone)]
pub(crate) struct QuantInfo {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
}

/// Reads the header (metadata and tensor table) of the GGUF file at `path`, without its tensors:
/// enough to decide whether to load it.
pub fn read_gguf(path: &Path) -> Result<Content, WeightsError> {
    let file = File::open(path).map_err(|source| WeightsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Content::read(&mut std::io::BufReader::new(file)).map_err(|e| WeightsError::BadGguf {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Lays the tensors of `content` (read from `file`) out for the pump: byte ranges checked
/// against the file's length and against each other.
fn layout(
    path: &Path,
    file: &File,
    content: &Content,
) -> Result<(Header, Vec<QuantInfo>), WeightsError> {
    let bad = |why: String| WeightsError::BadGguf {
        path: path.to_path_buf(),
        why,
    };
    let file_len = file_len(path, file)?;
    let data_offset = content.tensor_data_offset;
    if data_offset > file_len {
        return Err(bad(format!(
            "its tensor data would begin at byte {data_offset} but the file has {file_len}; it is truncated"
        )));
    }
    let data_len = file_len - data_offset;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let lie = |why: String| WeightsError::BadOffsets {
            path: path.to_path_buf(),
            tensor: name.clone(),
            why,
        };
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(lie(format!(
                "its {elems} elements are not whole blocks of {block} ({:?})",
                info.ggml_dtype
            )));
        }
        let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
        let end = info
            .offset
            .checked_add(bytes)
            .ok_or_else(|| lie(format!("its offset {} overflows", info.offset)))?;
        if end > data_len {
            return Err(lie(format!(
                "its bytes end at {end} but the file's data region has only {data_len}: the file is truncated"
            )));
        }
        tensors.push(TensorEntry {
            name: name.clone(),
            dtype: candle_core::DType::U8,
            shape: vec![bytes as usize],
            start: info.offset,
            end,
        });
    }
    sort_disjoint(path, &mut tensors)?;
    let quant = tensors
        .iter()
        .map(|t| {
            let info = &content.tensor_infos[&t.name];
            QuantInfo {
                dtype: info.ggml_dtype,
                dims: info.shape.dims().to_vec(),
            }
        })
        .collect();
    let header = Header {
        path: path.to_path_buf(),
        tensors,
        data_offset,
        file_len,
    };
    Ok((header, quant))
}

/// Loads every tensor of the GGUF file at `path` onto `device`, quantized blocks as they are.
/// `options.dtype` does not apply (quantized tensors keep their block type).
pub fn load_gguf(
    path: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<GgufLoaded, WeightsError> {
    let started = Instant::now();
    let content = read_gguf(path)?;
    load_gguf_from(path, content, device, options, started)
}

/// [`load_gguf`] for a header already read with [`read_gguf`] (the time it took counts from
/// `started`).
pub fn load_gguf_from(
    path: &Path,
    content: Content,
    device: &Device,
    options: &LoadOptions,
    started: Instant,
) -> Result<GgufLoaded, WeightsError> {
    let file = File::open(path).map_err(|source| WeightsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (header, quant) = layout(path, &file, &content)?;
    let cached_before = page_cache::resident_share(&file).ok();
    page_cache::advise_sequential(&file);
    let pump_options = options.pump();
    let chunks = pump::chunks(&header, pump_options.chunk_bytes);
    let (qtensors, times) = match device {
        Device::Cpu => {
            let (buffers, times) = crate::fill_host(&header, &file, &chunks, pump_options)?;
            let qtensors = buffers
                .into_iter()
                .zip(&quant)
                .map(|(bytes, q)| {
                    let storage = QStorage::from_data(bytes.into(), &Device::Cpu, q.dtype)?;
                    Ok(QTensor::new(storage, q.dims.clone())?)
                })
                .collect::<Result<Vec<_>, WeightsError>>()?;
            (qtensors, times)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => crate::cuda::load_quantized(
            &header,
            &file,
            &chunks,
            pump_options,
            cuda,
            &quant,
            options.direct_lanes,
        )?,
        #[allow(unreachable_patterns)]
        other => return Err(WeightsError::Device(format!("{:?}", other.location()))),
    };
    let tensors = header
        .tensors
        .iter()
        .map(|t| t.name.clone())
        .zip(qtensors)
        .collect();
    let PathTimes {
        alloc_seconds,
        staging_seconds,
    } = times;
    let report = LoadReport {
        path: path.to_path_buf(),
        tensors: header.tensors.len(),
        bytes: header.data_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        alloc_seconds,
        staging_seconds,
        convert_seconds: 0.0,
        cached_before,
        lanes: options.lanes,
        chunk_bytes: options.effective_chunk_bytes(),
    };
    tracing::info!("{report}");
    Ok(GgufLoaded {
        content,
        tensors,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::write_every_gguf_type;

    #[test]
    fn every_block_type_loads_bit_exact_with_candles_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.gguf");
        let named = write_every_gguf_type(&path).unwrap();
        // Odd chunk sizes: chunks end mid-block and mid-tensor, and one lane gets several.
        for (lanes, chunk_bytes, mapped) in [(3, 4099, false), (1, 1 << 20, false), (5, 777, true)]
        {
            let options = LoadOptions {
                lanes,
                chunk_bytes,
                mapped,
                ..LoadOptions::default()
            };
            let n =
                crate::bench::verify_gguf_against_candle(&path, &Device::Cpu, &options).unwrap();
            assert_eq!(n, named.len());
            let loaded = load_gguf(&path, &Device::Cpu, &options).unwrap();
            for (name, dtype) in &named {
                assert_eq!(loaded.tensors[name].dtype(), *dtype, "{name}");
            }
            assert_eq!(
                loaded.report.bytes,
                loaded
                    .tensors
                    .values()
                    .map(|t| t.storage_size_in_bytes() as u64)
                    .sum::<u64>()
            );
        }
    }

    #[test]
    fn a_truncated_gguf_names_the_tensor_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        write_every_gguf_type(&path).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 100).unwrap();
        let err = load_gguf(&path, &Device::Cpu, &LoadOptions::default())
            .err()
            .expect("a truncated file must be refused")
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(err.contains("tensor 't12.Q6K'"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, b"not a gguf file at all").unwrap();
        let err = load_gguf(&path, &Device::Cpu, &LoadOptions::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("x.gguf"), "{err}");
        assert!(err.contains("not a usable GGUF file"), "{err}");
    }

    #[test]
    fn the_streamed_gguf_writer_writes_what_candle_reads() {
        use crate::bench::{gguf_bytes, write_gguf_streamed};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("streamed.gguf");
        let tensors = vec![
            ("a".to_string(), vec![5, 256], GgmlDType::Q4K),
            ("b".to_string(), vec![7], GgmlDType::F32),
            ("c".to_string(), vec![2, 3, 64], GgmlDType::Q8_0),
        ];
        let data = write_gguf_streamed(
            &path,
            &[("general.architecture", "x")],
            &tensors,
            &mut |i, bytes, out| out.write_all(&vec![i as u8 + 1; bytes as usize]),
        )
        .unwrap();
        let loaded = load_gguf(&path, &Device::Cpu, &LoadOptions::default()).unwrap();
        for (i, (name, shape, dtype)) in tensors.iter().enumerate() {
            let t = &loaded.tensors[name];
            assert_eq!(t.shape().dims(), shape.as_slice(), "{name}");
            assert_eq!(t.dtype(), *dtype, "{name}");
            let bytes = t.data().unwrap();
            assert_eq!(bytes.len() as u64, gguf_bytes(shape, *dtype), "{name}");
            assert!(bytes.iter().all(|&b| b == i as u8 + 1), "{name}");
        }
        assert_eq!(
            loaded.content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "x"
        );
        // The data region: a (5 Q4K blocks of 144 bytes, 720 -> 736), b (28 -> 32), c (12 Q8_0
        // blocks of 34 bytes, the last: unpadded).
        assert_eq!(data, 736 + 32 + 12 * 34);
        // A writer that writes too little leaves nothing behind.
        let err = write_gguf_streamed(
            &path.with_extension("short"),
            &[],
            &tensors,
            &mut |_, _, _| Ok(()),
        );
        assert!(err.is_err());
        assert!(!path.with_extension("short").exists());
        // No temporary file either: the folder holds the one file written whole above.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [path.file_name().unwrap()], "{left:?}");
    }
}
