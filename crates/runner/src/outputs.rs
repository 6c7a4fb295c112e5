//! A stage's declared outputs are its own. Before an attempt starts, whatever an earlier,
//! unfinished attempt left at them is moved aside, to `.baton/stale/STAGE/` in the run folder,
//! so every attempt starts from nothing: a script that appends line by line never appends to a
//! half-written file, and no later stage can read one. The latest leftovers of each stage stay
//! there for inspection; older ones are removed.
//!
//! An output that ends with `/` is a folder the stage owns whole (`3_images/`): it is moved
//! aside whole, and after a success every file in it is hashed into the manifest, so a file
//! deleted later (one scene's picture) makes `baton resume` run the stage again.

use std::fs;
use std::path::{Path, PathBuf};

use crate::RunnerError;

/// Where leftovers go, inside the run folder.
pub const STALE_DIR: &str = ".baton/stale";

/// `path` (relative to `run_dir`, or absolute), resolved the way the filesystem will resolve
/// it: `..` taken back, and the symbolic links of the part that exists followed. An error
/// naming it when that lands outside `run_dir`.
pub fn inside(run_dir: &Path, path: &str) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "'{path}' is outside the run folder {}; use a path inside it",
            run_dir.display()
        )
    };
    let root = normalize(&std::path::absolute(run_dir).map_err(|e| e.to_string())?);
    let full = normalize(&root.join(path.trim_end_matches('/')));
    if !full.starts_with(&root) {
        return Err(outside());
    }
    // Follow the links of what exists: the deepest existing ancestor, resolved, must still
    // be in the (resolved) run folder.
    let real_root = root.canonicalize().unwrap_or_else(|_| root.clone());
    let mut existing = full.as_path();
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    if existing.starts_with(&root)
        && let Ok(real) = existing.canonicalize()
        && !real.starts_with(&real_root)
    {
        return Err(outside());
    }
    Ok(full)
}

/// `a/b/../c` → `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// True when `output` (as a pipeline writes it) names a folder.
pub fn is_folder(output: &str) -> bool {
    output.ends_with('/')
}

/// Moves whatever exists at `outputs` (relative to `run_dir`, placeholders filled) to
/// `.baton/stale/STAGE/`, replacing what an earlier attempt of `stage` left there, and makes
/// the outputs' parent folders. Returns the outputs that were moved.
pub fn set_aside(
    run_dir: &Path,
    stage: &str,
    outputs: &[String],
) -> Result<Vec<String>, RunnerError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| RunnerError::Io {
            action,
            path,
            source,
        }
    };
    // A stage may have made a link that leads out; nothing is moved or created through it.
    for output in outputs {
        inside(run_dir, output).map_err(|why| RunnerError::BadPipeline {
            origin: format!("stage '{stage}'"),
            why: format!("its output {why}"),
        })?;
    }
    let stale = run_dir.join(STALE_DIR).join(stage);
    let present: Vec<&String> = outputs
        .iter()
        .filter(|o| fs::symlink_metadata(run_dir.join(o.trim_end_matches('/'))).is_ok())
        .collect();
    if !present.is_empty() {
        match fs::remove_dir_all(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot clear old leftovers in", &stale)(e));
            }
            _ => {}
        }
    }
    let mut moved = Vec::new();
    for output in present {
        let rel = output.trim_end_matches('/');
        let from = run_dir.join(rel);
        let to: PathBuf = stale.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        fs::rename(&from, &to).map_err(io("cannot move aside", &from))?;
        moved.push(output.clone());
    }
    for output in outputs {
        let path = run_dir.join(output.trim_end_matches('/'));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
    }
    Ok(moved)
}

/// The files of a folder output, relative to `run_dir`, sorted; an error when the folder is
/// missing or holds no file.
pub fn files_in(run_dir: &Path, folder: &str) -> Result<Vec<String>, String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), found)?;
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
        Ok(())
    }
    let root = run_dir.join(folder.trim_end_matches('/'));
    let mut found = Vec::new();
    walk(&root, &mut found)
        .map_err(|e| format!("its output folder '{folder}' cannot be read ({e})"))?;
    if found.is_empty() {
        return Err(format!("its output folder '{folder}' holds no file"));
    }
    let mut rel: Vec<String> = found
        .iter()
        .filter_map(|p| p.strip_prefix(run_dir).ok())
        .map(|p| p.display().to_string())
        .collect();
    rel.sort();
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_moved_aside_and_only_the_latest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        fs::create_dir_all(run.join("3_images")).unwrap();
        fs::write(run.join("3_images/scene_01.png"), b"half").unwrap();
        fs::write(run.join("out.txt"), b"1\n2\n").unwrap();
        let outputs = [
            "out.txt".to_string(),
            "3_images/".to_string(),
            "x/y.json".to_string(),
        ];
        let moved = set_aside(run, "draw", &outputs).unwrap();
        assert_eq!(moved, ["out.txt", "3_images/"]);
        assert!(!run.join("out.txt").exists() && !run.join("3_images").exists());
        assert!(run.join("x").is_dir(), "parents of outputs are made");
        let stale = run.join(STALE_DIR).join("draw");
        assert_eq!(fs::read(stale.join("out.txt")).unwrap(), b"1\n2\n");
        assert_eq!(
            fs::read(stale.join("3_images/scene_01.png")).unwrap(),
            b"half"
        );
        // A second failed attempt replaces the first one's leftovers.
        fs::write(run.join("out.txt"), b"3\n").unwrap();
        set_aside(run, "draw", &outputs).unwrap();
        assert_eq!(fs::read(stale.join("out.txt")).unwrap(), b"3\n");
        assert!(!stale.join("3_images").exists());
        // Nothing there: nothing moved, the last leftovers stay.
        assert!(set_aside(run, "draw", &outputs).unwrap().is_empty());
        assert!(stale.join("out.txt").exists());
    }

    #[test]
    fn paths_are_judged_where_they_lead_links_included() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        fs::create_dir_all(run.join("3_images")).unwrap();
        assert!(inside(&run, "3_images/scene_01.png").is_ok());
        assert!(inside(&run, "a/../b.txt").is_ok());
        let full = run.display().to_string();
        assert!(inside(&run, &format!("{full}/x.json")).is_ok());
        for bad in ["../x.json", "a/../../x.json", "/etc/x.json"] {
            let err = inside(&run, bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
        assert!(inside(&run, &format!("{full}/../../x.json")).is_err());
        std::os::unix::fs::symlink(dir.path(), run.join("out")).unwrap();
        assert!(inside(&run, "out/x.json").is_err(), "a link that leads out");
        // Refused before anything is made through it.
        let err = set_aside(&run, "s", &["out/new/x.json".to_string()]).unwrap_err();
        assert!(err.to_string().contains("outside the run folder"), "{err}");
        assert!(!dir.path().join("new").exists());
    }

    #[test]
    fn a_folder_output_is_every_file_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert!(
            files_in(run, "2_audio/")
                .unwrap_err()
                .contains("'2_audio/'")
        );
        fs::create_dir_all(run.join("2_audio/parts")).unwrap();
        assert!(
            files_in(run, "2_audio/")
                .unwrap_err()
                .contains("holds no file")
        );
        fs::write(run.join("2_audio/scene_02.wav"), b"b").unwrap();
        fs::write(run.join("2_audio/scene_01.wav"), b"a").unwrap();
        fs::write(run.join("2_audio/parts/x.json"), b"{}").unwrap();
        assert_eq!(
            files_in(run, "2_audio/").unwrap(),
            [
                "2_audio/parts/x.json",
                "2_audio/scene_01.wav",
                "2_audio/scene_02.wav"
            ]
        );
    }
}
