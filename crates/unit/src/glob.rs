//! Go's `path.Match`, which fleet used for `Conflicts=` and `Replaces=` globs.
//! Hand-written because glob crates follow shell/fnmatch rules that differ from Go's
//! (`[^...]` negation, `\\` escapes, `*` never crossing `/`, and errors on malformed patterns).

/// Whether `name` matches the Go `path.Match` `pattern`. A malformed pattern matches nothing.
pub fn path_match(_pattern: &str, _name: &str) -> bool {
    todo!("scheduler helper")
}
