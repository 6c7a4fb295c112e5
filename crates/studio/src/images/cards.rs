//! Storyboard cards: a scene's title and narration on a plain frame, drawn with an 8x8 bitmap
//! font compiled into baton. They stand in for pictures when no image model is available, so a
//! run still completes on a fresh machine; the manifest and each PNG say plainly that they are
//! cards, never generated images.

use font8x8::UnicodeFonts;

use crate::storyboard::{Scene, Storyboard};

struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, color: [u8; 3]) {
        for y in y0..(y0 + h).min(self.height) {
            for x in x0..(x0 + w).min(self.width) {
                let at = (y * self.width + x) * 3;
                self.rgb[at..at + 3].copy_from_slice(&color);
            }
        }
    }

    /// One line of text at `scale` (pixels per font pixel); characters without a glyph are '?'.
    fn text(&mut self, x: usize, y: usize, line: &str, scale: usize, color: [u8; 3]) {
        for (i, c) in line.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(c)
                .or_else(|| font8x8::LATIN_FONTS.get(c))
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill(
                            x + (i * 8 + col) * scale,
                            y + row * scale,
                            scale,
                            scale,
                            color,
                        );
                    }
                }
            }
        }
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > width {
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(head);
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The card for `scene` of `board` as RGB pixels, `width` x `height`.
pub fn render(board: &Storyboard, scene: &Scene, width: usize, height: usize) -> Vec<u8> {
    let mut c = Canvas {
        width,
        height,
        rgb: vec![0; width * height * 3],
    };
    // A dark frame whose tint follows the scene, so consecutive cards are told apart.
    let tint = (scene.index as usize * 47) % 96;
    c.fill(
        0,
        0,
        width,
        height,
        [18, 20 + tint as u8 / 3, 32 + tint as u8],
    );
    let margin = (width / 16).max(4);
    c.fill(margin / 2, margin / 2, width - margin, 2, [200, 200, 210]);
    c.fill(
        margin / 2,
        height - margin / 2 - 2,
        width - margin,
        2,
        [200, 200, 210],
    );
    let usable = width - 2 * margin;
    let small = (usable / (8 * 40)).max(1);
    let large = (usable / (8 * 20)).clamp(1, 4);
    let mut y = margin;
    let header = format!(
        "SCENE {} OF {} - {}",
        scene.index,
        board.scenes.len(),
        board.title
    );
    for line in wrap(&header, usable / (8 * small)).into_iter().take(1) {
        c.text(margin, y, &line, small, [150, 170, 200]);
    }
    y += 8 * small * 3;
    for line in wrap(&scene.title, usable / (8 * large)).into_iter().take(3) {
        c.text(margin, y, &line, large, [255, 255, 255]);
        y += 8 * large + 4 * large;
    }
    y += 8 * small * 2;
    let footer_y = height - margin - 8 * small;
    for line in wrap(&scene.narration, usable / (8 * small)) {
        if y + 8 * small * 2 > footer_y {
            break;
        }
        c.text(margin, y, &line, small, [225, 225, 225]);
        y += 8 * small + 4 * small;
    }
    c.text(
        margin,
        footer_y,
        "STORYBOARD CARD - NOT A GENERATED IMAGE",
        small,
        [230, 170, 60],
    );
    c.rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wraps_at_spaces_and_splits_long_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert!(wrap("   ", 5).is_empty());
    }

    #[test]
    fn a_card_shows_text_on_its_frame() {
        let scene = Scene {
            index: 2,
            title: "The Market".into(),
            narration: "Vendors call out over the hiss of grilling skewers.".into(),
            image_prompt: "p".into(),
            duration_seconds: 5.0,
        };
        let board = Storyboard {
            topic: "T".into(),
            title: "Neon".into(),
            scenes: vec![scene.clone(), scene.clone()],
        };
        let rgb = render(&board, &scene, 256, 256);
        assert_eq!(rgb.len(), 256 * 256 * 3);
        let white = rgb.chunks(3).filter(|p| p == &[255, 255, 255]).count();
        let light = rgb.chunks(3).filter(|p| p == &[225, 225, 225]).count();
        assert!(
            white > 100 && light > 100,
            "title {white} px, narration {light} px"
        );
    }
}
