//! Upstream's image matching (`URLsMatchStr` in pkg/credentialprovider/keyring.go),
//! used for a provider's `matchImages` and for the keys of the auth map it returns:
//! both sides are scheme-less `host[:port][/path]`; the host must have as many DNS
//! labels as the pattern, each label matching its glob (`*`, `?`, `[...]` as Go's
//! `filepath.Match`, never crossing a dot), the port must be equal and the pattern's
//! path must be a string prefix of the image's.

/// Whether `image` (a repository such as `123.dkr.ecr.us-west-2.amazonaws.com/app`)
/// matches `pattern` (such as `*.dkr.ecr.*.amazonaws.com`).
pub fn matches(pattern: &str, image: &str) -> bool {
    let (p_host, p_port, p_path) = split(pattern);
    let (i_host, i_port, i_path) = split(image);
    if p_port != i_port || !i_path.starts_with(p_path) {
        return false;
    }
    let p_labels: Vec<&str> = p_host.split('.').collect();
    let i_labels: Vec<&str> = i_host.split('.').collect();
    p_labels.len() == i_labels.len()
        && p_labels
            .iter()
            .zip(&i_labels)
            .all(|(p, i)| label_matches(p.as_bytes(), i.as_bytes()))
}

/// Checks a pattern the way upstream validates `matchImages`: it must parse as a
/// scheme-less URL, and (stricter than upstream, which would only never match) its
/// globs must be well formed.
pub fn validate(pattern: &str) -> Result<(), String> {
    let (host, _, _) = split(pattern);
    if host.is_empty() {
        return Err("no host".into());
    }
    if pattern.contains("://") {
        return Err("must not have a scheme".into());
    }
    for label in host.split('.') {
        let mut rest = label.as_bytes();
        while let Some((&c, tail)) = rest.split_first() {
            rest = if c == b'[' {
                let end = tail
                    .iter()
                    .position(|&b| b == b']')
                    .ok_or_else(|| format!("unterminated [ in {label:?}"))?;
                &tail[end + 1..]
            } else {
                tail
            };
        }
    }
    Ok(())
}

/// `host`, `port` (empty when absent) and `path` (with its leading `/`, or empty).
fn split(s: &str) -> (&str, &str, &str) {
    let (authority, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port, path),
        _ => (authority, "", path),
    }
}

/// Go's `filepath.Match` on one label (which holds no separator).
fn label_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| label_matches(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && label_matches(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negated, class) = match rest[..end].split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, &rest[..end]),
            };
            class_contains(class, c) != negated && label_matches(&rest[end + 1..], name_rest)
        }
        Some((&p, rest)) => name.first() == Some(&p) && label_matches(rest, &name[1..]),
    }
}

fn class_contains(class: &[u8], c: u8) -> bool {
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == b'-' {
            if class[i] <= c && c <= class[i + 2] {
                return true;
            }
            i += 3;
        } else {
            if class[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_matching_rules() {
        let ecr = "*.dkr.ecr.*.amazonaws.com";
        assert!(matches(
            ecr,
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/app"
        ));
        assert!(matches(ecr, "123456789012.dkr.ecr.us-west-2.amazonaws.com"));
        // A star stays inside one label.
        assert!(!matches(ecr, "a.b.dkr.ecr.us-west-2.amazonaws.com/app"));
        assert!(!matches(ecr, "123.dkr.ecr.us-west-2.amazonaws.com.cn/app"));
        assert!(matches("*.*.registry.io", "a.b.registry.io/x"));
        assert!(!matches("*.registry.io", "registry.io/x"));
        // The port must be the same; the path is a plain prefix.
        assert!(matches("localhost:5000", "localhost:5000/team/app"));
        assert!(!matches("localhost:5000", "localhost:5001/team/app"));
        assert!(!matches("localhost", "localhost:5000/team/app"));
        assert!(matches("reg.io/team", "reg.io/team/app"));
        assert!(matches("reg.io/team", "reg.io/teamwork"));
        assert!(!matches("reg.io/team", "reg.io/other/app"));
        assert!(matches("reg?.io", "reg1.io/x"));
        assert!(matches("reg[0-9].io", "reg7.io/x"));
        assert!(!matches("reg[^0-9].io", "reg7.io/x"));
    }

    #[test]
    fn validation() {
        assert!(validate("*.dkr.ecr.*.amazonaws.com").is_ok());
        assert!(validate("https://reg.io").is_err());
        assert!(validate("reg[.io").is_err());
        assert!(validate("").is_err());
    }
}
