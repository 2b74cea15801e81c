//! The container images the tests start, from the one manifest (`scripts/images/manifest`) that
//! `scripts/build-images` builds them from: read with `include_str!` and looked up in `const`
//! context, so a name missing from the manifest stops the build rather than a test run.

/// The manifest as it was when this crate was compiled.
pub const MANIFEST: &str = include_str!("../../scripts/images/manifest");

/// An image reference split at its last `:`, as testcontainers takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    pub tag: &'static str,
}

impl Image {
    /// `name:tag`, as docker and compose take it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

pub const BASE: Image = offline("OFFLINE_BASE");
pub const POSTGRES: Image = offline("OFFLINE_POSTGRES");
pub const NGINX: Image = offline("OFFLINE_NGINX");
pub const PROMETHEUS: Image = offline("OFFLINE_PROMETHEUS");
pub const ALERTMANAGER: Image = offline("OFFLINE_ALERTMANAGER");
pub const REDIS: Image = offline("OFFLINE_REDIS");
pub const LITELLM: Image = offline("OFFLINE_LITELLM");
pub const DEMO_ECHO: Image = offline("OFFLINE_DEMO_ECHO");
pub const API: Image = offline("OFFLINE_API");

/// An offline image of the manifest (built by `scripts/build-images`), split into name and tag.
const fn offline(key: &str) -> Image {
    let (name, tag) = split_reference(lookup(MANIFEST, key));
    Image { name, tag }
}

/// The value of `KEY=value` in `text` (a line that starts with the key and `=`); a missing key
/// panics, which in a `const` is a compile error.
pub const fn lookup(text: &'static str, key: &str) -> &'static str {
    let bytes = text.as_bytes();
    let key = key.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'\n' {
            end += 1;
        }
        if end - start > key.len() && bytes[start + key.len()] == b'=' && same(bytes, start, key) {
            let (_, rest) = bytes.split_at(start + key.len() + 1);
            let (value, _) = rest.split_at(end - start - key.len() - 1);
            return match std::str::from_utf8(value) {
                Ok(value) => value,
                Err(_) => panic!("scripts/images/manifest is not UTF-8"),
            };
        }
        start = end + 1;
    }
    panic!("a key the tests use is missing from scripts/images/manifest")
}

/// Whether `bytes[at..]` starts with `prefix` (`starts_with` is not `const`).
const fn same(bytes: &[u8], at: usize, prefix: &[u8]) -> bool {
    let mut i = 0;
    while i < prefix.len() {
        if bytes[at + i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `registry:5000/name:tag` -> (`registry:5000/name`, `tag`): the tag follows the last `:`.
const fn split_reference(reference: &'static str) -> (&'static str, &'static str) {
    let bytes = reference.as_bytes();
    let mut colon = bytes.len();
    while colon > 0 {
        colon -= 1;
        if bytes[colon] == b':' {
            let (name, tag) = reference.split_at(colon);
            let (_, tag) = tag.split_at(1);
            return (name, tag);
        }
    }
    panic!("an image in scripts/images/manifest has no tag")
}

/// Every `KEY=value` line of the manifest, comments and blank lines skipped.
pub fn entries() -> impl Iterator<Item = (&'static str, &'static str)> {
    MANIFEST
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once('=').unwrap_or_else(|| panic!("scripts/images/manifest: `{l}` is not KEY=image:tag")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const COMPOSE: &str = include_str!("../../compose/docker-compose.yml");
    const ENV_EXAMPLE: &str = include_str!("../../compose/.env.example");

    /// Every `${NAME_IMAGE:-default}` of the compose file, in order.
    fn compose_defaults() -> Vec<(&'static str, &'static str)> {
        COMPOSE
            .split("${")
            .skip(1)
            .filter_map(|s| s.split_once('}').map(|(inner, _)| inner))
            .filter_map(|inner| inner.split_once(":-"))
            .filter(|(name, _)| name.ends_with("_IMAGE"))
            .collect()
    }

    #[test]
    fn every_line_of_the_manifest_is_a_plain_reference_bash_and_rust_read_alike() {
        let mut keys: Vec<&str> = Vec::new();
        for (key, value) in entries() {
            assert!(key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'), "key {key}");
            assert!(!value.is_empty() && !value.contains(char::is_whitespace), "{key}: `{value}`");
            assert!(!value.contains(['"', '\'', '$', '`', '\\']), "{key}: `{value}` needs no quoting");
            assert!(value.rsplit_once(':').is_some_and(|(n, t)| !n.is_empty() && !t.contains('/')), "{key}: no tag");
            assert_eq!(lookup(MANIFEST, key), value, "the const lookup reads {key} as the line says");
            assert!(!keys.contains(&key), "{key} is in the manifest twice");
            keys.push(key);
        }
        assert_eq!(POSTGRES.reference(), lookup(MANIFEST, "OFFLINE_POSTGRES"));
    }

    #[test]
    fn compose_defaults_are_the_manifest_pins_and_every_pin_is_a_compose_default() {
        let defaults = compose_defaults();
        assert!(defaults.len() >= 9, "compose's image variables were found: {defaults:?}");
        // The demo stand-in has no official image: compose runs the offline build by default.
        assert_eq!(lookup(MANIFEST, "DEMO_ECHO_IMAGE"), DEMO_ECHO.reference());
        for (name, default) in &defaults {
            let pinned = entries().find(|(k, _)| k == name).map(|(_, v)| v);
            assert_eq!(Some(*default), pinned, "compose's default for {name} is the manifest's {name}");
        }
        for (key, _) in entries().filter(|(k, _)| k.ends_with("_IMAGE")) {
            assert!(defaults.iter().any(|(name, _)| *name == key), "{key} is an image of compose/docker-compose.yml");
        }
    }

    #[test]
    fn env_example_pins_no_image_so_new_env_files_follow_the_manifest() {
        // compose/.env is made from this file: a pin here would outlive every manifest bump.
        for line in ENV_EXAMPLE.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let key = line.split_once('=').map_or("", |(k, _)| k.trim());
            assert!(!key.ends_with("_IMAGE"), "compose/.env.example sets {key}: {line}");
        }
    }

    #[test]
    fn every_offline_image_has_a_recipe_that_build_images_can_build() {
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images");
        let offline: Vec<_> = entries().filter_map(|(k, _)| k.strip_prefix("OFFLINE_")).collect();
        assert_eq!(offline.first(), Some(&"BASE"), "base is built first: the others start from it");
        for key in offline.into_iter().filter(|k| *k != "API") {
            let dir = recipes.join(key.to_lowercase().replace('_', "-"));
            assert!(dir.join("Dockerfile").is_file(), "OFFLINE_{key} has no recipe at {}", dir.display());
        }
    }
}
