//! The files of a configMap or secret volume (or projection): every key, or the
//! chosen `items` under their own paths and modes.

use k8s_openapi::api::core::v1::KeyToPath;

use super::atomic_writer::{FileProjection, Payload, validate_path};
use crate::pods::sources::KeyedData;

/// Upstream's default file mode for configMap, secret, downwardAPI and projected
/// volumes (0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// `kind` names the object in errors ("configmap", "secret").
pub fn project(
    kind: &str,
    data: &KeyedData,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    payload: &mut Payload,
) -> Result<(), String> {
    let default_mode = default_mode.unwrap_or(DEFAULT_MODE);
    let items = match items {
        Some(items) if !items.is_empty() => items,
        _ => {
            for (key, value) in data {
                insert(payload, key, value, default_mode)?;
            }
            return Ok(());
        }
    };
    for item in items {
        let Some(value) = data.get(&item.key) else {
            if optional {
                continue;
            }
            let what = if kind == "secret" { "secret" } else { "config" };
            return Err(format!(
                "{kind} references non-existent {what} key: {}",
                item.key
            ));
        };
        insert(
            payload,
            &item.path,
            value,
            item.mode.unwrap_or(default_mode),
        )?;
    }
    Ok(())
}

pub fn insert(payload: &mut Payload, path: &str, data: &[u8], mode: i32) -> Result<(), String> {
    validate_path(path)?;
    let mode = u32::try_from(mode).map_err(|_| format!("invalid mode {mode} for {path}"))?;
    payload.insert(
        path.to_string(),
        FileProjection {
            data: data.to_vec(),
            mode,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_select_keys_and_missing_keys_fail_unless_optional() {
        let data = KeyedData::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        let mut all = Payload::new();
        project("configmap", &data, None, Some(0o400), false, &mut all).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"].mode, 0o400);

        let items = vec![KeyToPath {
            key: "b".into(),
            path: "dir/b.txt".into(),
            mode: Some(0o600),
        }];
        let mut some = Payload::new();
        project("secret", &data, Some(&items), None, false, &mut some).unwrap();
        assert_eq!(some["dir/b.txt"].data, b"2");
        assert_eq!(some["dir/b.txt"].mode, 0o600);

        let missing = vec![KeyToPath {
            key: "zz".into(),
            path: "zz".into(),
            mode: None,
        }];
        let err = project(
            "configmap",
            &data,
            Some(&missing),
            None,
            false,
            &mut Payload::new(),
        )
        .unwrap_err();
        assert_eq!(err, "configmap references non-existent config key: zz");
        project(
            "configmap",
            &data,
            Some(&missing),
            None,
            true,
            &mut Payload::new(),
        )
        .unwrap();
    }
}
