//! The binary encoding of a prepared state delta: a sequence of
//! `store_len:u8 store key_len:u32be key tag:u8 [value_len:u32be value]` entries, where tag 1
//! is a put and 0 a delete.

/// One change: store, key, and the new value (`None`: deleted).
pub(crate) type Change<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// A decoded change.
pub(crate) type OwnedChange = (String, Vec<u8>, Option<Vec<u8>>);

pub(crate) fn encode<'a>(changes: impl Iterator<Item = Change<'a>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (store, key, value) in changes {
        out.push(store.len() as u8);
        out.extend_from_slice(store.as_bytes());
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

pub(crate) fn decode(mut bytes: &[u8]) -> Option<Vec<OwnedChange>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn len32(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let mut changes = Vec::new();
    while !bytes.is_empty() {
        let store_len = take(&mut bytes, 1)?[0] as usize;
        let store = String::from_utf8(take(&mut bytes, store_len)?.to_vec()).ok()?;
        let key_len = len32(&mut bytes)?;
        let key = take(&mut bytes, key_len)?.to_vec();
        let value = match take(&mut bytes, 1)?[0] {
            1 => {
                let n = len32(&mut bytes)?;
                Some(take(&mut bytes, n)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        changes.push((store, key, value));
    }
    Some(changes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_rejects_truncation() {
        let changes = vec![
            (
                "totals".to_string(),
                b"ada".to_vec(),
                Some(b"{\"n\":1}".to_vec()),
            ),
            ("totals".to_string(), b"".to_vec(), None),
            ("s".to_string(), vec![0, 255], Some(vec![])),
        ];
        let bytes = super::encode(
            changes
                .iter()
                .map(|(s, k, v)| (s.as_str(), k.as_slice(), v.as_deref())),
        );
        assert_eq!(super::decode(&bytes), Some(changes));
        assert_eq!(super::decode(&bytes[..bytes.len() - 1]), None);
    }
}
