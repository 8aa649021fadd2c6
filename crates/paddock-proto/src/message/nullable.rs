//! `null` means "the default", for every field that has one.
//!
//! serde takes an absent field's default from `#[serde(default)]`, but a
//! `null` only for `Option` fields. Clients in other languages often write
//! `null` for what they did not set (a nil map or slice in Go, `None` in
//! Python), so every defaulted field of the schema decodes `null` to its
//! default as well: one rule for the documentation to state.

use serde::{Deserialize, Deserializer};

/// Decodes `null` as `T::default()`.
pub(super) fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Decodes `null` as [`crate::DEFAULT_MAX_PAYLOAD`].
pub(super) fn or_default_max_payload<'de, D>(deserializer: D) -> Result<u32, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::deserialize(deserializer)?.unwrap_or(crate::DEFAULT_MAX_PAYLOAD))
}

/// Decodes `null` as [`crate::DEFAULT_WINDOW`].
pub(super) fn or_default_window<'de, D>(deserializer: D) -> Result<u32, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::deserialize(deserializer)?.unwrap_or(crate::DEFAULT_WINDOW))
}

/// Decodes `null` as [`super::files::DEFAULT_FILE_MODE`].
pub(super) fn or_default_mode<'de, D>(deserializer: D) -> Result<u32, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::deserialize(deserializer)?.unwrap_or(super::files::DEFAULT_FILE_MODE))
}
