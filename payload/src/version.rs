//! Versions of dotted whole numbers, parsed strictly and compared numerically.

/// Most dotted parts a version may have.
pub const MAX_VERSION_PARTS: usize = 16;

/// Parse a version of dotted whole numbers (`2`, `1.10.3`): every part ASCII digits that
/// fit a u64, at most [`MAX_VERSION_PARTS`] parts. Anything else is an error with the
/// reason, never a guess: a version that cannot be compared cannot pass a downgrade check.
pub fn parse_version(v: &str) -> std::result::Result<Vec<u64>, String> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > MAX_VERSION_PARTS {
        return Err(format!(
            "{} dotted parts, at most {MAX_VERSION_PARTS}",
            parts.len()
        ));
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "part {} ({p:?}) is not a whole number: expected dotted numbers such as 1.2.3",
                    i + 1
                ));
            }
            p.parse::<u64>()
                .map_err(|_| format!("part {} ({p}) is too large", i + 1))
        })
        .collect()
}

/// Compare two versions of dotted numbers numerically (missing parts count as 0, so `2`
/// equals `2.0`); an error names the version that does not parse.
pub fn version_cmp(a: &str, b: &str) -> std::result::Result<std::cmp::Ordering, String> {
    let x = parse_version(a).map_err(|e| format!("{a:?}: {e}"))?;
    let y = parse_version(b).map_err(|e| format!("{b:?}: {e}"))?;
    let n = x.len().max(y.len());
    for i in 0..n {
        let c = x.get(i).unwrap_or(&0).cmp(y.get(i).unwrap_or(&0));
        if c != std::cmp::Ordering::Equal {
            return Ok(c);
        }
    }
    Ok(std::cmp::Ordering::Equal)
}
