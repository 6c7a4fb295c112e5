//! The loader against candle's own: bit-exact tensors for every dtype, whatever the chunking, and
//! a clear error for every kind of broken file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use baton_base::page_cache;
use baton_weights::{LoadOptions, WeightsError, bench, load_safetensors};
use candle_core::{DType, Device, Tensor};

fn tensor(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    bench::random_tensor(dtype, shape, seed).unwrap()
}

fn raw(t: &Tensor) -> Vec<u8> {
    bench::raw_bytes(t).unwrap()
}

fn mixed_file(dir: &Path) -> PathBuf {
    let path = dir.join("mixed.safetensors");
    bench::write_mixed(&path, 7).unwrap();
    path
}

/// 9 dtypes x 6 shapes in the mixed file.
const MIXED_TENSORS: usize = 54;

fn assert_same(path: &Path, options: &LoadOptions) {
    let matched =
        bench::verify_against_candle(path, &Device::Cpu, options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(matched, MIXED_TENSORS);
    let loaded = load_safetensors(path, &Device::Cpu, options).unwrap();
    let bytes: usize = loaded
        .tensors
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    assert_eq!(loaded.report.bytes, bytes as u64);
    assert_eq!(loaded.report.tensors, MIXED_TENSORS);
    assert!(loaded.report.seconds > 0.0);
}

#[test]
fn the_check_against_candle_catches_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    // Converting floats to f16 changes the F32 tensors: the check must say which differs.
    let options = LoadOptions {
        dtype: Some(DType::F16),
        ..LoadOptions::default()
    };
    let err = bench::verify_against_candle(&path, &Device::Cpu, &options).unwrap_err();
    assert!(
        err.to_string().contains("differs from candle's load"),
        "{err}"
    );
}

#[test]
fn bit_exact_with_candle_for_every_dtype_and_chunking() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    for (lanes, chunk_bytes, slots) in [
        (1, 16 << 20, 2), // one chunk holds everything
        (3, 4099, 2),     // chunks split tensors at odd places
        (4, 1, 1),        // a byte at a time
        (2, 1000, 3),
    ] {
        // Read with pread, and copied out of a mapping of the file.
        for mapped in [false, true] {
            let options = LoadOptions {
                lanes,
                chunk_bytes,
                slots,
                mapped,
                ..LoadOptions::default()
            };
            assert_same(&path, &options);
        }
    }
}

#[test]
fn converts_float_tensors_to_the_dtype_asked_for_and_leaves_integers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bf16.safetensors");
    let weight = tensor(DType::F32, &[5, 9], 3)
        .clamp(-1e4f32, 1e4f32)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let ids = tensor(DType::I64, &[4], 4);
    let tensors = HashMap::from([
        ("w".to_string(), weight.clone()),
        ("ids".to_string(), ids.clone()),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let options = LoadOptions {
        dtype: Some(DType::F16),
        ..LoadOptions::default()
    };
    let loaded = load_safetensors(&path, &Device::Cpu, &options).unwrap();
    assert_eq!(loaded.tensors["w"].dtype(), DType::F16);
    assert_eq!(
        raw(&loaded.tensors["w"]),
        raw(&weight.to_dtype(DType::F16).unwrap())
    );
    assert_eq!(loaded.tensors["ids"].dtype(), DType::I64);
    assert_eq!(raw(&loaded.tensors["ids"]), raw(&ids));
}

#[test]
fn models_take_the_tensors_through_a_var_builder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linear.safetensors");
    let w = Tensor::arange(0f32, 6.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let b = Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap();
    let tensors = HashMap::from([("proj.weight".to_string(), w), ("proj.bias".to_string(), b)]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let vb = load_safetensors(&path, &Device::Cpu, &LoadOptions::default())
        .unwrap()
        .var_builder(DType::F32, &Device::Cpu);
    let linear = candle_nn::linear(3, 2, vb.pp("proj")).unwrap();
    let x = Tensor::new(&[[1f32, 1.0, 1.0]], &Device::Cpu).unwrap();
    let y = candle_core::Module::forward(&linear, &x).unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![13f32, 32.0]]);
}

/// A safetensors file written by hand, so its header can lie.
fn handmade(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    bench::write_raw(&path, header, data).unwrap();
    path
}

fn load_err(path: &Path) -> WeightsError {
    match load_safetensors(path, &Device::Cpu, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn a_truncated_file_is_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(&path);
    assert!(matches!(err, WeightsError::BadOffsets { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("truncated") && text.contains("tensor '"),
        "{text}"
    );

    // Cut inside the header itself.
    std::fs::write(&path, &bytes[..20]).unwrap();
    let text = load_err(&path).to_string();
    assert!(text.contains("truncated or not safetensors"), "{text}");
}

#[test]
fn a_header_that_lies_about_offsets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 64];
    // The span does not match the shape.
    let path = handmade(
        dir.path(),
        "span.safetensors",
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#,
        &data,
    );
    let text = load_err(&path).to_string();
    assert!(
        text.contains("'a'") && text.contains("span 12 bytes") && text.contains("16"),
        "{text}"
    );
    // Past the end of the data.
    let path = handmade(
        dir.path(),
        "past.safetensors",
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[56,72]}}"#,
        &data,
    );
    let text = load_err(&path).to_string();
    assert!(text.contains("end at 72"), "{text}");
    // Two tensors on the same bytes.
    let path = handmade(
        dir.path(),
        "overlap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}"#,
        &data,
    );
    let text = load_err(&path).to_string();
    assert!(text.contains("overlap"), "{text}");
    // Backwards.
    let path = handmade(
        dir.path(),
        "back.safetensors",
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}"#,
        &data,
    );
    assert!(load_err(&path).to_string().contains("backwards"));
    // Not JSON at all.
    let path = handmade(dir.path(), "junk.safetensors", "not json", &data);
    assert!(matches!(load_err(&path), WeightsError::BadHeader { .. }));
}

#[test]
fn an_unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = handmade(
        dir.path(),
        "f8.safetensors",
        r#"{"__metadata__":{"format":"pt"},"scales":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[0,4]}}"#,
        &[0u8; 4],
    );
    let err = load_err(&path);
    let text = err.to_string();
    assert!(matches!(err, WeightsError::UnsupportedDtype { .. }));
    assert!(
        text.contains("'scales'") && text.contains("F8_E5M2"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let err = load_err(Path::new("/nonexistent/model.safetensors"));
    assert!(matches!(err, WeightsError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/model.safetensors"));
}

#[test]
fn warming_reads_the_whole_file_into_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = mixed_file(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let report = page_cache::warm(&path, 3).unwrap();
    assert_eq!(report.bytes, len);
    // Just read, so resident (the file is far smaller than this machine's memory).
    assert!(report.cached_after > 0.99, "{report}");
    let loaded = load_safetensors(&path, &Device::Cpu, &LoadOptions::default()).unwrap();
    assert!(loaded.report.cached_before.unwrap() > 0.99);
    assert!(loaded.report.to_string().contains("GB/s"));
}
