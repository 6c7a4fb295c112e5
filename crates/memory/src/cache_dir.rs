//! Where baton keeps files between runs (learned memory needs, fetched models): one rule, so
//! every part agrees on it.

use std::path::PathBuf;

/// The folder `override_var` names, else `$XDG_CACHE_HOME/baton/{sub}`, else
/// `~/.cache/baton/{sub}`, else `{temp}/baton/{sub}`. An empty `sub` is baton's cache itself.
pub fn baton_cache_dir(override_var: &str, sub: &str) -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(override_var).unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .map(|d| d.join("baton"))
            .or_else(|| var("HOME").map(|d| d.join(".cache/baton")))
            .unwrap_or_else(|| std::env::temp_dir().join("baton"))
            .join(sub)
    })
}
