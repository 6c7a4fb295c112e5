//! Where a run's files go: `output/{YYYYMMDD_HHMMSS}_{slug}/`, as the seed lays it out.
//!
//! The slug is the one piece of user text that becomes a path, so it is reduced to ASCII
//! letters, digits and `_`: safe on any filesystem, and no topic can climb out of the output
//! folder. Times are UTC, so two machines name the same moment alike.

use std::time::{SystemTime, UNIX_EPOCH};

/// A topic that cannot name a run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bad topic '{topic}': {why}")]
pub struct TopicError {
    pub topic: String,
    pub why: &'static str,
}

const MAX_SLUG: usize = 48;

/// `"Cyberpunk Tokyo"` → `cyberpunk_tokyo`. A topic with no ASCII letters or digits gets
/// `topic_` and a hash of its text, so distinct topics stay distinct.
pub fn slug(topic: &str) -> Result<String, TopicError> {
    if topic.trim().is_empty() {
        return Err(TopicError {
            topic: topic.to_string(),
            why: "it is empty; pass a subject such as --topic \"Cyberpunk Tokyo\"",
        });
    }
    if topic.chars().count() > 500 {
        return Err(TopicError {
            topic: topic.chars().take(40).collect::<String>() + "…",
            why: "it is longer than 500 characters; shorten it",
        });
    }
    // A topic travels into file names, prompts, terminals and stage commands. Commands are
    // argv, never shell lines, so `&`, `;` or `$` can do no harm there (a stage that hands the
    // topic to a shell should read $BATON_TOPIC, quoted); what is refused is what could steer a
    // path or a terminal, rather than quietly rewriting it.
    if topic.contains('/') || topic.contains('\\') {
        return Err(TopicError {
            topic: topic.to_string(),
            why: "it contains a path separator ('/' or '\\'); a topic is a subject, not a path",
        });
    }
    if topic.chars().any(char::is_control) {
        return Err(TopicError {
            topic: topic.escape_debug().to_string(),
            why: "it contains a control character; write it on one line",
        });
    }
    let mut slug = String::new();
    for c in topic.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('_') {
            slug.push('_');
        }
    }
    slug.truncate(MAX_SLUG);
    let slug = slug.trim_end_matches('_').to_string();
    if slug.is_empty() {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        return Ok(format!("topic_{:08x}", hash as u32));
    }
    Ok(slug)
}

/// The run folder's name for `topic` at `when`: `20261127_101500_cyberpunk_tokyo`.
pub fn run_folder_name(topic: &str, when: SystemTime) -> Result<String, TopicError> {
    Ok(format!("{}_{}", timestamp(when), slug(topic)?))
}

/// `YYYYMMDD_HHMMSS` in UTC.
pub fn timestamp(when: SystemTime) -> String {
    let secs = when.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}_{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Creates `dir` and finds out, before any work, whether it takes files (a probe written and
/// removed): a stage refuses an unwritable folder before it loads a model.
pub fn ensure_writable(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slugs_are_safe_path_parts() {
        assert_eq!(slug("Cyberpunk Tokyo").unwrap(), "cyberpunk_tokyo");
        assert_eq!(slug("  etc passwd ").unwrap(), "etc_passwd");
        assert_eq!(slug("Tom & Jerry").unwrap(), "tom_jerry");
        assert_eq!(
            slug("Salt & Pepper; $5 <deal>").unwrap(),
            "salt_pepper_5_deal"
        );
        assert_eq!(slug("Café -- Noir!").unwrap(), "caf_noir");
        let long = slug(&"word ".repeat(40)).unwrap();
        assert!(long.len() <= MAX_SLUG && !long.ends_with('_'), "{long}");
        let a = slug("東京").unwrap();
        let b = slug("大阪").unwrap();
        assert!(a.starts_with("topic_") && a != b, "{a} {b}");
        for s in [&a, &b, &long] {
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
    }

    #[test]
    fn paths_and_control_characters_are_refused_and_shell_characters_are_not() {
        for bad in [
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "a\nb",
            "bell\u{7}",
            "esc\u{1b}[2J",
        ] {
            let err = slug(bad).unwrap_err().to_string();
            assert!(err.starts_with("bad topic '"), "{err}");
        }
        assert!(
            slug("AC/DC")
                .unwrap_err()
                .to_string()
                .contains("path separator")
        );
        assert!(
            slug("a\tb")
                .unwrap_err()
                .to_string()
                .contains("control character")
        );
        // Argv, not a shell line: these are subjects like any other.
        for fine in [
            "a; rm -rf",
            "$(reboot)",
            "`id`",
            "x | y",
            "a > b",
            "a & b",
            "..",
        ] {
            assert!(slug(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn empty_or_huge_topics_are_refused() {
        assert!(slug("   ").unwrap_err().to_string().contains("empty"));
        assert!(
            slug(&"x".repeat(501))
                .unwrap_err()
                .to_string()
                .contains("500")
        );
    }

    #[test]
    fn folder_names_use_utc_timestamps() {
        // 2026-11-27 10:15:00 UTC.
        let when = UNIX_EPOCH + Duration::from_secs(1_795_774_500);
        assert_eq!(
            run_folder_name("Cyberpunk Tokyo", when).unwrap(),
            "20261127_101500_cyberpunk_tokyo"
        );
        assert_eq!(timestamp(UNIX_EPOCH), "19700101_000000");
        // A leap day.
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229_000000"
        );
    }
}
