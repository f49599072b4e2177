//! Pinned maps of another layout are refused before anything is loaded.
//!
//! aya adopts a pinned map by its name without comparing its definition with the object's,
//! so maps kept (`--keep-maps`) across an upgrade that changed a key or a value would be read
//! with the new layout: sessions and flows misread, or a verifier error that names no cause.
//! The key and value sizes of every pinned map are compared with the object's first.
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;

use super::DatapathError;

/// One pinned map whose sizes differ from the object's.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub map: String,
    /// (key, value) bytes of the pin and of this agent's object.
    pub pinned: (u32, u32),
    pub object: (u32, u32),
}

/// The pins among `pins` (map name, pin path) whose key or value size differs from the
/// object's map of that name; a pin that does not exist is fine (it is created).
pub fn mismatches(object: &[u8], pins: &[(&str, PathBuf)]) -> Result<Vec<Mismatch>, DatapathError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DatapathError::Other(format!("reading the XDP object's maps: {e}")))?;
    let mut wrong = Vec::new();
    for (name, path) in pins {
        let Some(def) = obj.maps.get(*name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(path).map_err(|e| {
            DatapathError::Other(format!("reading pinned map {}: {e}", path.display()))
        })?;
        let pinned = (info.key_size(), info.value_size());
        let ours = (def.key_size(), def.value_size());
        if pinned != ours {
            wrong.push(Mismatch {
                map: (*name).to_owned(),
                pinned,
                object: ours,
            });
        }
    }
    Ok(wrong)
}

/// The error for pins of another layout in `dir`.
pub fn refuse(dir: &Path, wrong: &[Mismatch]) -> DatapathError {
    let list = wrong
        .iter()
        .map(|m| {
            format!(
                "{} (pinned key/value {}/{} bytes, this agent's {}/{})",
                m.map, m.pinned.0, m.pinned.1, m.object.0, m.object.1
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    DatapathError::Other(format!(
        "the maps pinned in {} have another layout than this agent's: {list}. They were made \
         by another version and cannot be kept (their sessions and flows would be misread): \
         stop the old agent, remove {} (clients reconnect) and start without --keep-maps",
        dir.display(),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_common::map_names;

    /// Every pinned name is a map of the object: a name the object lacks would be skipped,
    /// and its pin never compared.
    #[test]
    fn every_pinned_map_is_compared_and_absent_pins_are_fine() {
        let obj = aya_obj::Object::parse(crate::datapath::BPF_OBJECT).unwrap();
        for name in map_names::ALL {
            assert!(obj.maps.contains_key(name), "{name} is not in the object");
        }
        let dir = std::env::temp_dir().join(format!("pc-pins-{}", std::process::id()));
        let pins: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        assert_eq!(
            mismatches(crate::datapath::BPF_OBJECT, &pins).unwrap(),
            vec![]
        );
    }
}
