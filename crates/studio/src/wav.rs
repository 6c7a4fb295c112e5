//! WAV files: 16-bit PCM written whole, and read back with every header field checked, so a
//! voice engine's output and baton's own are verified, not trusted.

use std::path::Path;

/// Why bytes are not a WAV file baton reads.
#[derive(Debug, thiserror::Error)]
#[error("'{path}' is not a 16-bit PCM WAV file: {why}")]
pub struct WavError {
    pub path: String,
    pub why: String,
}

/// Decoded audio: mono samples in -1..1.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate.max(1) as f64
    }
}

/// A 16-bit mono PCM WAV of `audio` (samples clamped to -1..1).
pub fn encode(audio: &Audio) -> Vec<u8> {
    let data = (audio.samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&audio.rate.to_le_bytes());
    out.extend_from_slice(&(audio.rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in &audio.samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    out
}

/// Reads a 16-bit PCM WAV (mono, or several channels mixed down), checking its header.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Audio, WavError> {
    let bad = |why: &str| WavError {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    if u32_at(4) as usize + 8 != bytes.len() {
        return Err(bad("the RIFF size does not match the file's length"));
    }
    let (mut format, mut data) = (None, None);
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32_at(at + 4) as usize;
        let body = at + 8;
        if body + size > bytes.len() {
            return Err(bad("a chunk runs past the end of the file"));
        }
        match &bytes[at..at + 4] {
            b"fmt " if size >= 16 => format = Some(body),
            b"data" => data = Some((body, size)),
            _ => {}
        }
        at = body + size + size % 2;
    }
    let fmt = format.ok_or_else(|| bad("no fmt chunk"))?;
    let (data, size) = data.ok_or_else(|| bad("no data chunk"))?;
    let (tag, channels, rate) = (u16_at(fmt), u16_at(fmt + 2), u32_at(fmt + 4));
    let (align, bits) = (u16_at(fmt + 12), u16_at(fmt + 14));
    if tag != 1 || bits != 16 {
        return Err(bad("only 16-bit PCM is read"));
    }
    if channels == 0 || align != channels * 2 || rate == 0 || u32_at(fmt + 8) != rate * align as u32
    {
        return Err(bad("its channel count, block align and byte rate disagree"));
    }
    if size % align as usize != 0 {
        return Err(bad("its data is not a whole number of frames"));
    }
    let frames = size / align as usize;
    let samples = (0..frames)
        .map(|f| {
            let sum: f32 = (0..channels as usize)
                .map(|c| {
                    i16::from_le_bytes([
                        bytes[data + f * align as usize + c * 2],
                        bytes[data + f * align as usize + c * 2 + 1],
                    ]) as f32
                })
                .sum();
            sum / channels as f32 / 32768.0
        })
        .collect();
    Ok(Audio { rate, samples })
}

/// Reads and decodes a WAV file.
pub fn read(path: &Path) -> Result<Audio, WavError> {
    let bytes = std::fs::read(path).map_err(|e| WavError {
        path: path.display().to_string(),
        why: format!("cannot read it: {e}"),
    })?;
    decode(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_to_the_same_samples() {
        let audio = Audio {
            rate: 16000,
            samples: (0..1000).map(|i| ((i as f32) * 0.01).sin() * 0.5).collect(),
        };
        let bytes = encode(&audio);
        assert_eq!(bytes.len(), 44 + 2000);
        let back = decode(&bytes, Path::new("x.wav")).unwrap();
        assert_eq!(back.rate, 16000);
        for (a, b) in audio.samples.iter().zip(&back.samples) {
            assert!((a - b).abs() < 1.0 / 16000.0);
        }
    }

    #[test]
    fn broken_headers_are_refused() {
        let good = encode(&Audio {
            rate: 8000,
            samples: vec![0.0; 10],
        });
        let p = Path::new("x.wav");
        assert!(decode(&good[..30], p).is_err());
        let mut lying = good.clone();
        lying[40] = 0xff; // data size past the end
        assert!(
            decode(&lying, p)
                .unwrap_err()
                .to_string()
                .contains("'x.wav'")
        );
        let mut float = good.clone();
        float[34] = 32; // 32 bits per sample
        assert!(decode(&float, p).is_err());
        assert!(decode(b"not a wav file at all", p).is_err());
    }
}
