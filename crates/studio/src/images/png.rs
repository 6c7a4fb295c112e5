//! PNG files: each scene's picture encoded with its prompt, seed, model and steps in text
//! chunks, and written whole.

use std::path::{Path, PathBuf};

use baton_base::atomic_file::write_atomic;

use super::{ImagesError, ImagesManifest};

/// Scene `scene`'s picture as a PNG: where it goes, its name in the run folder, its bytes.
pub(super) fn scene_png(
    out_dir: &Path,
    scene: u32,
    rgb: &[u8],
    width: usize,
    height: usize,
    text: &[(&str, &str)],
) -> Result<(PathBuf, String, Vec<u8>), ImagesError> {
    let png =
        encode_png(rgb, width, height, text).map_err(|why| ImagesError::Png { scene, why })?;
    let name = format!("scene_{scene:02}.png");
    Ok((out_dir.join(&name), format!("3_images/{name}"), png))
}

/// Writes every image, each whole, then `images.json`.
pub(super) fn save(
    out_dir: &Path,
    files: &[(PathBuf, Vec<u8>)],
    manifest: &ImagesManifest,
) -> Result<(), ImagesError> {
    for (path, bytes) in files {
        write_atomic(path, bytes)?;
    }
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
    write_atomic(&out_dir.join("images.json"), &json)?;
    Ok(())
}

/// An 8-bit RGB PNG with `text` as iTXt chunks (prompts are any language).
pub fn encode_png(
    rgb: &[u8],
    width: usize,
    height: usize,
    text: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut encoder = ::png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(::png::ColorType::Rgb);
        encoder.set_depth(::png::BitDepth::Eight);
        for (key, value) in text {
            encoder
                .add_itxt_chunk(key.to_string(), value.to_string())
                .map_err(|e| e.to_string())?;
        }
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The pixels of an 8-bit RGB PNG (what `encode_png` writes), row by row.
pub fn decode_png(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("'{}': {e}", path.display()))?;
    let mut reader = ::png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| format!("'{}': {e}", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("'{}': {e}", path.display()))?;
    buf.truncate(frame.buffer_size());
    Ok(buf)
}
