//! What `baton bench load` measures against: a safetensors file of bf16 tensors shaped like a
//! Llama-3-8B checkpoint (embedding, then layers of attention and MLP weights), candle's default
//! loader, and PyTorch's `safetensors.torch.load_file(device="cuda")` in a child process.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};

use crate::WeightsError;

/// Hidden size, KV width, MLP width and vocabulary of the shapes written (Llama 3 8B's).
const HIDDEN: usize = 4096;
const KV: usize = 1024;
const MLP: usize = 14336;
const VOCAB: usize = 128_256;

/// Writes a bf16 safetensors file of about `target_bytes` (at least one layer) at `path`, in
/// whole: to a temporary name, synced, then renamed. Returns its tensor data size.
pub fn write_llama_like(path: &Path, target_bytes: u64) -> Result<u64, WeightsError> {
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut total = 0u64;
    let mut push = |name: String, shape: Vec<usize>, total: &mut u64| {
        *total += shape.iter().product::<usize>() as u64 * 2;
        shapes.push((name, shape));
    };
    if target_bytes >= (VOCAB * HIDDEN * 2) as u64 * 3 {
        push(
            "model.embed_tokens.weight".into(),
            vec![VOCAB, HIDDEN],
            &mut total,
        );
    }
    let mut layer = 0;
    while total < target_bytes || layer == 0 {
        let p = format!("model.layers.{layer}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj.weight", vec![KV, HIDDEN]),
            ("self_attn.v_proj.weight", vec![KV, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![MLP, HIDDEN]),
            ("mlp.up_proj.weight", vec![MLP, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, MLP]),
        ] {
            push(format!("{p}.{name}"), shape, &mut total);
        }
        layer += 1;
    }
    let specs: Vec<_> = shapes
        .into_iter()
        .map(|(name, shape)| (name, shape, DType::BF16))
        .collect();
    // Plausible bf16 values (small magnitudes), one random block repeated.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let block: Vec<u8> = (0..(4 << 20) / 2)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = half::bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1);
            v.to_bits().to_le_bytes()
        })
        .collect();
    write_streamed(path, &specs, &mut |_, bytes, out| {
        repeat_block(&block, bytes, out)
    })?;
    Ok(total)
}

/// Writes a safetensors file of `tensors` (name, shape, dtype) whose data `fill(index, bytes,
/// out)` writes tensor by tensor, so a file far larger than memory can be made; each call must
/// write exactly `bytes`. The file is written whole: to a temporary name, synced, then renamed.
/// Returns the size of its data.
#[allow(clippy::type_complexity)]
pub fn write_streamed(
    path: &Path,
    tensors: &[(String, Vec<usize>, DType)],
    fill: &mut dyn FnMut(usize, u64, &mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, WeightsError> {
    let bytes_of = |shape: &[usize], dtype: DType| {
        shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape, dtype) in tensors {
        let bytes = bytes_of(shape, *dtype);
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": crate::header::dtype_name(*dtype),
                "shape": shape,
                "data_offsets": [offset, offset + bytes]
            }),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&header).expect("a map serializes");
    // The data region starts 8-byte aligned, as the reference writer does.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    write_whole(path, &mut |file| {
        file.write_all(&(text.len() as u64).to_le_bytes())?;
        file.write_all(&text)?;
        for (i, (name, shape, dtype)) in tensors.iter().enumerate() {
            fill_counted(name, i, bytes_of(shape, *dtype), file, fill)?;
        }
        Ok(())
    })?;
    Ok(offset)
}

/// Calls `fill` for tensor `index` and checks that it wrote exactly `want` bytes.
#[allow(clippy::type_complexity)]
fn fill_counted(
    name: &str,
    index: usize,
    want: u64,
    out: &mut dyn Write,
    fill: &mut dyn FnMut(usize, u64, &mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut counted = Counted {
        inner: out,
        written: 0,
    };
    fill(index, want, &mut counted)?;
    if counted.written != want {
        return Err(std::io::Error::other(format!(
            "tensor '{name}' got {} bytes of data, not {want}",
            counted.written
        )));
    }
    Ok(())
}

/// Writes `path` whole (`baton_base::atomic_file`): `write` fills a temporary file beside it,
/// through a large buffer; on an error `path` is untouched.
fn write_whole(
    path: &Path,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), WeightsError> {
    baton_base::atomic_file::write_atomic_with(path, |file| {
        let mut buffered = std::io::BufWriter::with_capacity(8 << 20, file);
        write(&mut buffered)?;
        buffered.flush()
    })?;
    Ok(())
}

/// GGUF's id for a block type (ggml's `ggml_type`).
fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Bytes of a tensor of `shape` in blocks of `dtype` (the shape must be whole blocks).
pub fn gguf_bytes(shape: &[usize], dtype: GgmlDType) -> u64 {
    (shape.iter().product::<usize>() / dtype.block_size() * dtype.type_size()) as u64
}

/// Writes a GGUF (version 3) file of `tensors` (name, shape as candle gives it, block type) with
/// string `metadata`, whose data `fill(index, bytes, out)` writes tensor by tensor, like
/// [`write_streamed`]; written whole. Returns the size of its tensor data.
#[allow(clippy::type_complexity)]
pub fn write_gguf_streamed(
    path: &Path,
    metadata: &[(&str, &str)],
    tensors: &[(String, Vec<usize>, GgmlDType)],
    fill: &mut dyn FnMut(usize, u64, &mut dyn Write) -> std::io::Result<()>,
) -> Result<u64, WeightsError> {
    const ALIGN: u64 = 32;
    let mut head: Vec<u8> = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut head, key);
        head.extend(8u32.to_le_bytes()); // a string value
        string(&mut head, value);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, shape, dtype) in tensors {
        string(&mut head, name);
        head.extend((shape.len() as u32).to_le_bytes());
        // ggml lists dimensions innermost first.
        for d in shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(ggml_type_id(*dtype).to_le_bytes());
        head.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + gguf_bytes(shape, *dtype)).next_multiple_of(ALIGN);
    }
    while !(head.len() as u64).is_multiple_of(ALIGN) {
        head.push(0);
    }
    let mut data = 0u64;
    write_whole(path, &mut |file| {
        file.write_all(&head)?;
        let mut at = 0u64;
        for (i, (name, shape, dtype)) in tensors.iter().enumerate() {
            file.write_all(&vec![0u8; (offsets[i] - at) as usize])?;
            let bytes = gguf_bytes(shape, *dtype);
            fill_counted(name, i, bytes, file, fill)?;
            at = offsets[i] + bytes;
        }
        data = at;
        Ok(())
    })?;
    Ok(data)
}

/// Writes a GGUF file of about `target_bytes` shaped like a Llama-3-8B in Q4_K_M (Q4_K
/// matrices, Q6_K for the MLP's down projection and the output, f32 norms), with random blocks.
pub fn write_gguf_llama_like(path: &Path, target_bytes: u64) -> Result<u64, WeightsError> {
    let mut tensors: Vec<(String, Vec<usize>, GgmlDType)> = Vec::new();
    let mut total = 0u64;
    let mut push = |name: String, shape: Vec<usize>, dtype: GgmlDType, total: &mut u64| {
        *total += gguf_bytes(&shape, dtype);
        tensors.push((name, shape, dtype));
    };
    let ends =
        gguf_bytes(&[VOCAB, HIDDEN], GgmlDType::Q4K) + gguf_bytes(&[VOCAB, HIDDEN], GgmlDType::Q6K);
    // The embedding and the output only where they leave room for layers (as for safetensors).
    if target_bytes >= ends * 3 {
        let (embed, output) = ("token_embd.weight", "output.weight");
        push(
            embed.into(),
            vec![VOCAB, HIDDEN],
            GgmlDType::Q4K,
            &mut total,
        );
        push(
            output.into(),
            vec![VOCAB, HIDDEN],
            GgmlDType::Q6K,
            &mut total,
        );
    }
    let norm = "output_norm.weight";
    push(norm.into(), vec![HIDDEN], GgmlDType::F32, &mut total);
    let mut layer = 0;
    while total < target_bytes || layer == 0 {
        let p = format!("blk.{layer}");
        for (name, shape, dtype) in [
            ("attn_norm.weight", vec![HIDDEN], GgmlDType::F32),
            ("attn_q.weight", vec![HIDDEN, HIDDEN], GgmlDType::Q4K),
            ("attn_k.weight", vec![KV, HIDDEN], GgmlDType::Q4K),
            ("attn_v.weight", vec![KV, HIDDEN], GgmlDType::Q6K),
            ("attn_output.weight", vec![HIDDEN, HIDDEN], GgmlDType::Q4K),
            ("ffn_norm.weight", vec![HIDDEN], GgmlDType::F32),
            ("ffn_gate.weight", vec![MLP, HIDDEN], GgmlDType::Q4K),
            ("ffn_up.weight", vec![MLP, HIDDEN], GgmlDType::Q4K),
            ("ffn_down.weight", vec![HIDDEN, MLP], GgmlDType::Q6K),
        ] {
            push(format!("{p}.{name}"), shape, dtype, &mut total);
        }
        layer += 1;
    }
    let block = random_block(4 << 20, 0x51f1_5eed);
    write_gguf_streamed(
        path,
        &[
            ("general.architecture", "llama"),
            ("general.name", "baton bench"),
        ],
        &tensors,
        &mut |_, bytes, out| repeat_block(&block, bytes, out),
    )
}

/// `bytes` bytes of `block`, repeated.
fn repeat_block(block: &[u8], bytes: u64, out: &mut dyn Write) -> std::io::Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// `len` random bytes from `seed` (xorshift).
fn random_block(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every block type GGUF files carry (Q8K is only an intermediate), each quantized by candle
/// from values of its own, in shapes whose bytes fill no chunk evenly: the file the GGUF
/// bit-exactness checks load. Returns the tensors' names and types.
pub fn write_every_gguf_type(path: &Path) -> Result<Vec<(String, GgmlDType)>, WeightsError> {
    use candle_core::quantized::{QTensor, gguf_file};
    let types = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    let mut named = Vec::new();
    let mut tensors = Vec::new();
    for (i, &dtype) in types.iter().enumerate() {
        let (rows, cols) = (3 + i, 256 * (1 + i % 3));
        let values: Vec<f32> = (0..rows * cols)
            .map(|k| ((k * 7919 + i * 31) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let t = candle_core::Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
        tensors.push(QTensor::quantize(&t, dtype)?);
        named.push((format!("t{i}.{dtype:?}"), dtype));
    }
    let refs: Vec<(&str, &QTensor)> = named
        .iter()
        .zip(&tensors)
        .map(|((n, _), t)| (n.as_str(), t))
        .collect();
    let arch = gguf_file::Value::String("test".into());
    write_whole(path, &mut |file| {
        // candle's writer wants Seek; the bytes go through memory first (the file is small).
        let mut buf = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &[("general.architecture", &arch)], &refs)
            .map_err(std::io::Error::other)?;
        file.write_all(buf.get_ref())
    })?;
    Ok(named)
}

/// Loads every tensor of the GGUF at `path` the way candle's models do (`Content::tensor`: a
/// host vector per tensor, then a copy to `device`); returns the tensors and the seconds taken,
/// the device synchronised.
pub fn candle_gguf_load(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, QTensor>, f64), WeightsError> {
    use candle_core::quantized::gguf_file::Content;
    let started = Instant::now();
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|source| {
        WeightsError::Open {
            path: path.to_path_buf(),
            source,
        }
    })?);
    let content = Content::read(&mut file).map_err(|e| WeightsError::BadGguf {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for name in content.tensor_infos.keys() {
        out.insert(name.clone(), content.tensor(&mut file, name, device)?);
    }
    device.synchronize()?;
    Ok((out, started.elapsed().as_secs_f64()))
}

/// Loads the GGUF at `path` with baton's loader and with candle's onto `device` and compares
/// every tensor's blocks bit for bit. Returns how many matched; a mismatch names the tensor.
pub fn verify_gguf_against_candle(
    path: &Path,
    device: &Device,
    options: &crate::LoadOptions,
) -> Result<usize, WeightsError> {
    let (reference, _) = candle_gguf_load(path, device)?;
    let loaded = crate::load_gguf(path, device, options)?;
    same_tensors(&reference, &loaded.tensors, options, &|got, want| {
        Ok(got.dtype() == want.dtype()
            && got.shape() == want.shape()
            && got.data()? == want.data()?)
    })
}

/// Checks that `loaded` holds the same tensors as `reference`, every one alike by `same`;
/// returns how many, or an error naming the first that differs.
#[allow(clippy::type_complexity)]
fn same_tensors<T>(
    reference: &HashMap<String, T>,
    loaded: &HashMap<String, T>,
    options: &crate::LoadOptions,
    same: &dyn Fn(&T, &T) -> Result<bool, WeightsError>,
) -> Result<usize, WeightsError> {
    if loaded.len() != reference.len() {
        return Err(WeightsError::Device(format!(
            "{} tensors loaded, candle loads {}",
            loaded.len(),
            reference.len()
        )));
    }
    for (name, want) in reference {
        let alike = match loaded.get(name) {
            Some(got) => same(got, want)?,
            None => false,
        };
        if !alike {
            return Err(WeightsError::Device(format!(
                "tensor '{name}' differs from candle's load with {options:?}"
            )));
        }
    }
    Ok(reference.len())
}

/// A writer that counts what passes through it.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Seconds candle's own loader (`candle_core::safetensors::load`: mmap, then a copy per
/// tensor) takes for `path`, with the device synchronised.
pub fn candle_default_load(path: &Path, device: &Device) -> Result<f64, WeightsError> {
    let started = Instant::now();
    let tensors = candle_core::safetensors::load(path, device)?;
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    drop(tensors);
    Ok(seconds)
}

/// The PyTorch side, run by `python`: CUDA initialised before the clock starts.
const TORCH_LOAD: &str = r#"
import sys, time
import torch
from safetensors.torch import load_file
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t = time.perf_counter()
d = load_file(sys.argv[1], device="cuda")
torch.cuda.synchronize()
print(time.perf_counter() - t)
"#;

/// Seconds PyTorch's `load_file(device="cuda")` takes for `path`, in a child process, or why it
/// could not be measured.
pub fn torch_load(python: &str, path: &Path) -> Result<f64, String> {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(TORCH_LOAD)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{python} failed: {}",
            err.lines().last().unwrap_or("no output")
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("{python} printed no time: {e}"))
}

/// Every dtype the loader reads, in shapes that fill no chunk evenly and one empty tensor, with
/// random bits (NaN payloads included): the file the bit-exactness checks load.
pub fn write_mixed(path: &Path, seed: u64) -> Result<(), WeightsError> {
    use candle_core::DType;
    let shapes: [&[usize]; 6] = [&[1], &[7, 13], &[3, 5, 17], &[1031], &[0], &[64, 129]];
    let mut tensors = std::collections::HashMap::new();
    for (d, dtype) in [
        DType::U8,
        DType::U32,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::BF16,
        DType::F16,
        DType::F32,
        DType::F64,
    ]
    .into_iter()
    .enumerate()
    {
        for (s, shape) in shapes.iter().enumerate() {
            let t = random_tensor(dtype, shape, seed + (d * 16 + s) as u64)?;
            tensors.insert(format!("{dtype:?}.{shape:?}"), t);
        }
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

/// A tensor of random bits (every pattern, NaN payloads included) from `seed` (xorshift).
pub fn random_tensor(
    dtype: candle_core::DType,
    shape: &[usize],
    seed: u64,
) -> Result<candle_core::Tensor, WeightsError> {
    let n = shape.iter().product::<usize>() * dtype.size_in_bytes();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Ok(candle_core::Tensor::from_raw_buffer(
        &bytes,
        dtype,
        shape,
        &Device::Cpu,
    )?)
}

/// A safetensors file written by hand from `header` (JSON) and `data`, so its header can lie:
/// what the refusal checks load.
pub fn write_raw(path: &Path, header: &str, data: &[u8]) -> std::io::Result<()> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes)
}

/// A tensor's raw little-endian bytes, read back to the host.
pub fn raw_bytes(t: &candle_core::Tensor) -> Result<Vec<u8>, WeightsError> {
    use candle_core::DType;
    let t = t.flatten_all()?.to_device(&Device::Cpu)?;
    fn le<T: candle_core::WithDType, const N: usize>(
        t: &candle_core::Tensor,
        bytes: impl Fn(T) -> [u8; N],
    ) -> Result<Vec<u8>, WeightsError> {
        Ok(t.to_vec1::<T>()?.into_iter().flat_map(bytes).collect())
    }
    match t.dtype() {
        DType::U8 => Ok(t.to_vec1::<u8>()?),
        DType::U32 => le(&t, u32::to_le_bytes),
        DType::I16 => le(&t, i16::to_le_bytes),
        DType::I32 => le(&t, i32::to_le_bytes),
        DType::I64 => le(&t, i64::to_le_bytes),
        DType::BF16 => le(&t, |v: half::bf16| v.to_bits().to_le_bytes()),
        DType::F16 => le(&t, |v: half::f16| v.to_bits().to_le_bytes()),
        DType::F32 => le(&t, |v: f32| v.to_bits().to_le_bytes()),
        DType::F64 => le(&t, |v: f64| v.to_bits().to_le_bytes()),
        other => Err(WeightsError::Device(format!("no raw view of {other:?}"))),
    }
}

/// Loads `path` with baton's loader and with candle's onto `device` and compares every tensor
/// bit for bit. Returns how many tensors matched; a mismatch is an error naming the tensor.
pub fn verify_against_candle(
    path: &Path,
    device: &Device,
    options: &crate::LoadOptions,
) -> Result<usize, WeightsError> {
    let reference = candle_core::safetensors::load(path, device)?;
    let loaded = crate::load_safetensors(path, device, options)?;
    same_tensors(&reference, &loaded.tensors, options, &|got, want| {
        Ok(got.dtype() == want.dtype()
            && got.dims() == want.dims()
            && raw_bytes(got)? == raw_bytes(want)?)
    })
}
