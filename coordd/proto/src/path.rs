//! ZooKeeper's path rules (`PathUtils.validatePath`) and path helpers.

/// Why a path is not a valid znode path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

fn invalid_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{e000}'..='\u{f8ff}'
        | '\u{fff0}'..='\u{ffff}')
}

/// Checks a path as ZooKeeper does. For a sequential create pass `sequential = true`:
/// ZooKeeper then checks the path with a digit appended, so `/a/` is allowed.
pub fn validate_path(path: &str, sequential: bool) -> Result<(), PathError> {
    let err = |reason| {
        Err(PathError {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return err("path length must be > 0");
    }
    if !path.starts_with('/') {
        return err("path must start with / character");
    }
    if path.len() == 1 {
        return Ok(());
    }
    if path.ends_with('/') && !sequential {
        return err("path must not end with / character");
    }
    // For a sequential create the appended digits make the last component non-empty
    // and never "." or "..".
    let comps: Vec<&str> = path[1..].split('/').collect();
    let last = comps.len() - 1;
    for (i, comp) in comps.iter().enumerate() {
        if comp.is_empty() {
            if sequential && i == last {
                continue;
            }
            return err("empty node name specified");
        }
        if *comp == "." || *comp == ".." {
            // With a sequence suffix the last component is no longer "." or "..".
            if !(sequential && i == last) {
                return err("relative paths not allowed");
            }
        }
        if comp.chars().any(invalid_char) {
            return err("invalid character");
        }
    }
    Ok(())
}

/// The parent of a valid non-root path ("/" for top-level nodes).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of a valid non-root path.
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `parent` + "/" + `child`, without doubling the root's slash.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// The sequential suffix ZooKeeper appends: the parent's count of child creations,
/// zero-padded to ten digits (`%010d`; negative once the counter wraps, as in ZooKeeper).
pub fn sequential_suffix(counter: i32) -> String {
    format!("{counter:010}")
}

/// True when `path` is `prefix` or lies under it.
pub fn is_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_rules() {
        for ok in ["/", "/a", "/a/b", "/a.b", "/..a", "/zookeeper/quota"] {
            assert!(validate_path(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "/a/", "//", "/a//b", "/.", "/a/..", "/a/./b", "/a\u{0}b", "/\u{1}",
        ] {
            assert!(validate_path(bad, false).is_err(), "{bad:?}");
        }
        assert!(validate_path("/a/", true).is_ok());
        assert!(validate_path("/a/.", true).is_ok());
        assert!(validate_path("/a//", true).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(sequential_suffix(7), "0000000007");
        assert_eq!(sequential_suffix(-5), "-000000005");
        assert!(is_under("/a/b", "/a"));
        assert!(!is_under("/ab", "/a"));
        assert!(is_under("/a", "/a"));
        assert!(is_under("/x", "/"));
    }
}
