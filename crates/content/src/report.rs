//! What the content pipeline made, for the run's `report/index.html`: the video, then every
//! scene with its picture, its narration clip and its text, read from the run folder as it is
//! (a stage that has not run yet shows nothing, not an error).

use std::fmt::Write as _;
use std::path::Path;

use baton_runner::report::escape;

/// The HTML section, or `None` when the run has no storyboard yet.
pub fn report_html(run_dir: &Path) -> Option<String> {
    let scripts = run_dir.join("1_scripts");
    let board_file = std::fs::read_dir(&scripts)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_scenes.json"))?;
    let board: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&board_file).ok()?).ok()?;
    let text = |v: &serde_json::Value| escape(v.as_str().unwrap_or_default());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<h2>{}</h2>\n<p>storyboard: <a href=\"../1_scripts/{file}\">{file}</a></p>",
        text(&board["title"]),
        file = escape(&board_file.file_name()?.to_string_lossy())
    );
    let video_dir = run_dir.join("4_video");
    let video = std::fs::read_dir(&video_dir).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".mp4"))
    });
    match video {
        Some(name) => {
            let srt = name.trim_end_matches(".mp4").to_string() + ".srt";
            // The first scene's picture stands for the video until it plays.
            let poster = ["3_images/scene_01.png"]
                .into_iter()
                .find(|p| run_dir.join(p).is_file())
                .map_or(String::new(), |p| format!(" poster=\"../{p}\""));
            let _ = writeln!(
                out,
                "<video id=\"video\" controls preload=\"metadata\" width=\"640\"{poster} src=\"../4_video/{n}\"></video>\n<p>video: <a href=\"../4_video/{n}\">{n}</a> · subtitles: <a href=\"../4_video/{s}\">{s}</a></p>",
                n = escape(&name),
                s = escape(&srt)
            );
        }
        None if video_dir.join("video.json").is_file() => {
            out.push_str(
                "<p><b>No video</b>: the video stage was skipped (see the warnings above).</p>\n",
            );
        }
        None => {}
    }
    out.push_str("<div class=\"storyboard\">\n");
    for scene in board["scenes"].as_array()? {
        let n = scene["index"].as_u64().unwrap_or(0);
        let picture = format!("3_images/scene_{n:02}.png");
        let clip = format!("2_audio/scene_{n:02}.wav");
        let _ = write!(out, "<div class=\"scene\" id=\"scene-{n}\">");
        if run_dir.join(&picture).is_file() {
            let _ = write!(
                out,
                "<a href=\"../{picture}\"><img class=\"thumb\" src=\"../{picture}\" alt=\"scene {n}\"></a>"
            );
        }
        let _ = write!(
            out,
            "<div><p><b>{n}. {}</b></p><p>{}</p><p><i>picture:</i> {}</p>",
            text(&scene["title"]),
            text(&scene["narration"]),
            text(&scene["image_prompt"])
        );
        if run_dir.join(&clip).is_file() {
            let _ = write!(
                out,
                "<audio controls preload=\"none\" src=\"../{clip}\"></audio>"
            );
        }
        out.push_str("</div></div>\n");
    }
    out.push_str("</div>\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_show_with_their_picture_clip_and_text_and_markup_is_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(report_html(run), None);
        std::fs::create_dir_all(run.join("1_scripts")).unwrap();
        std::fs::create_dir_all(run.join("3_images")).unwrap();
        std::fs::create_dir_all(run.join("4_video")).unwrap();
        std::fs::write(
            run.join("1_scripts/t_scenes.json"),
            r#"{"topic":"T","title":"Tom & Jerry","scenes":[
                {"index":1,"title":"One","narration":"A <b>cat</b>.","image_prompt":"a cat","duration_seconds":5},
                {"index":2,"title":"Two","narration":"A mouse.","image_prompt":"a mouse","duration_seconds":5}]}"#,
        )
        .unwrap();
        std::fs::write(run.join("3_images/scene_01.png"), b"png").unwrap();
        std::fs::write(run.join("4_video/video.json"), b"{}").unwrap();
        let html = report_html(run).unwrap();
        assert!(html.contains("Tom &amp; Jerry"), "{html}");
        assert!(html.contains("A &lt;b&gt;cat&lt;/b&gt;."), "{html}");
        assert!(html.contains("src=\"../3_images/scene_01.png\""), "{html}");
        assert!(!html.contains("scene_02.png"), "{html}");
        assert!(!html.contains("<audio"), "{html}");
        assert!(html.contains("No video"), "{html}");
        std::fs::write(run.join("4_video/t.mp4"), b"mp4").unwrap();
        let html = report_html(run).unwrap();
        assert!(html.contains("src=\"../4_video/t.mp4\""), "{html}");
        assert!(html.contains("../4_video/t.srt"), "{html}");
    }
}
