//! Debugging entry point for comparing the images stage with diffusers: the starting noise read
//! from a file (`--latents`) instead of drawn. What every phase produced is written out by
//! `crate::dump` (`--dump DIR`): token ids and hidden states in `text.safetensors`, each step's
//! timestep, model input, prediction and latents in `denoise.safetensors`, and the decoded pixels
//! before they become a PNG in `decode.safetensors`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ImagesError;

/// Starting noise for every scene, read from `path` for `--latents`: one tensor (the file's only
/// one, or the one named `latents`) of shape (scenes, C, H, W), or (1, C, H, W) for every scene,
/// in a safetensors or .npy file (f32 or f16), unscaled (the stage scales it as it would scale
/// its own noise).
pub struct GivenLatents {
    path: PathBuf,
    rows: Tensor,
}

impl GivenLatents {
    pub fn read(path: &Path) -> Result<GivenLatents, ImagesError> {
        let bad = |why: String| {
            ImagesError::Option(format!(
                "--latents '{}': {why}; give a .safetensors or .npy file holding one f32 or f16 tensor (scenes, channels, height/8, width/8)",
                path.display()
            ))
        };
        let rows = if path.extension().is_some_and(|e| e == "npy") {
            let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            read_npy(&bytes).map_err(bad)?
        } else {
            let mut all = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| bad(e.to_string()))?;
            match all.remove("latents") {
                Some(t) => t,
                None if all.len() == 1 => all.into_values().next().expect("one"),
                None => {
                    return Err(bad(format!(
                        "it holds {} tensors and none is named 'latents'",
                        all.len()
                    )));
                }
            }
        };
        if rows.rank() != 4 {
            return Err(bad(format!(
                "its tensor has shape {:?}, not 4 dims",
                rows.dims()
            )));
        }
        Ok(GivenLatents {
            path: path.to_path_buf(),
            rows: rows.to_dtype(DType::F32)?,
        })
    }

    /// Scene number `position` (from 0)'s noise, (1, C, H, W), checked against `shape`.
    pub(super) fn scene(
        &self,
        position: usize,
        shape: (usize, usize, usize),
    ) -> Result<Tensor, ImagesError> {
        let (n, c, h, w) = self.rows.dims4()?;
        if (c, h, w) != shape {
            return Err(ImagesError::Option(format!(
                "--latents '{}' has shape ({n}, {c}, {h}, {w}) but this model at this size starts from (scenes, {}, {}, {})",
                self.path.display(),
                shape.0,
                shape.1,
                shape.2
            )));
        }
        let row = if n == 1 { 0 } else { position };
        if row >= n {
            return Err(ImagesError::Option(format!(
                "--latents '{}' holds {n} scenes' noise; the storyboard has more (give one row per scene, or one for all)",
                self.path.display()
            )));
        }
        Ok(self.rows.narrow(0, row, 1)?)
    }
}

/// A little-endian f32 or f16 array in C order from a .npy file's bytes.
fn read_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy version {v} is not known")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("its header is cut short")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start_matches([' ', ':']))
    };
    let descr = field("descr").ok_or("no 'descr' in its header")?;
    let dtype = if descr.starts_with("'<f4'") {
        DType::F32
    } else if descr.starts_with("'<f2'") {
        DType::F16
    } else {
        return Err(format!(
            "its dtype {} is not '<f4' or '<f2'",
            &descr[..descr.find(',').unwrap_or(descr.len())]
        ));
    };
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("it is in Fortran order; save it in C order".into());
    }
    let shape = field("shape").ok_or("no 'shape' in its header")?;
    let shape: Vec<usize> = shape[1..shape.find(')').ok_or("its shape is not closed")?]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("its shape has '{s}'")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let count: usize = shape.iter().product();
    if data.len() != count * dtype.size_in_bytes() {
        return Err(format!(
            "it holds {} bytes of data, not the {} its shape {shape:?} needs",
            data.len(),
            count * dtype.size_in_bytes()
        ));
    }
    Tensor::from_raw_buffer(data, dtype, &shape, &Device::Cpu).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .npy file as numpy writes it.
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn npy_arrays_are_read_in_c_order_and_bad_ones_refused() {
        let values: Vec<f32> = (0..24).map(|v| v as f32 * 0.5).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = read_npy(&npy("<f4", "(1, 2, 3, 4)", &data)).unwrap();
        assert_eq!(t.dims(), &[1, 2, 3, 4]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        let halves: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let t = read_npy(&npy("<f2", "(2, 12)", &halves)).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        let e = read_npy(&npy("<f8", "(3,)", &[0; 24])).unwrap_err();
        assert!(e.contains("'<f8'"), "{e}");
        let e = read_npy(&npy("<f4", "(1, 2, 3, 5)", &data)).unwrap_err();
        assert!(e.contains("not the 120"), "{e}");
        assert!(
            read_npy(b"PK\x03\x04 a zip")
                .unwrap_err()
                .contains("not a .npy")
        );
    }

    #[test]
    fn given_latents_are_checked_against_the_model_and_the_scenes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noise.safetensors");
        let rows = Tensor::arange(0f32, 2.0 * 4.0 * 8.0 * 8.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 8, 8))
            .unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("latents".to_string(), rows)]),
            &path,
        )
        .unwrap();
        let given = GivenLatents::read(&path).unwrap();
        let second = given.scene(1, (4, 8, 8)).unwrap();
        assert_eq!(second.dims(), &[1, 4, 8, 8]);
        assert_eq!(
            second.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0],
            256.0
        );
        let e = given.scene(0, (16, 8, 8)).unwrap_err().to_string();
        assert!(e.contains("(2, 4, 8, 8)") && e.contains("16, 8, 8"), "{e}");
        let e = given.scene(2, (4, 8, 8)).unwrap_err().to_string();
        assert!(e.contains("holds 2 scenes"), "{e}");
        let e = GivenLatents::read(&dir.path().join("missing.npy"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("missing.npy") && e.contains(".safetensors or .npy"),
            "{e}"
        );
    }
}
