//! "Did you mean": the known name closest to a mistyped one, for errors that name a bad value.

/// Edit distance (insertions, deletions, substitutions) between `a` and `b`, by characters.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `typed`, if it is close enough to be what was meant: at most a
/// third of its length apart (and at least one edit allowed), case ignored.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed = typed.to_lowercase();
    let limit = (typed.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&typed, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_its_name_and_nonsense_finds_none() {
        assert_eq!(distance("sd-trubo", "sd-turbo"), 2);
        assert_eq!(distance("", "abc"), 3);
        let names = ["sd-turbo", "sdxl-turbo", "flux-schnell", "smollm2"];
        assert_eq!(closest("sd-trubo", names), Some("sd-turbo"));
        assert_eq!(closest("FLUX-SCHNEL", names), Some("flux-schnell"));
        assert_eq!(closest("smolm2", names), Some("smollm2"));
        assert_eq!(closest("stable-cascade", names), None);
    }
}
