//! parse ∘ encode: every request the client side encodes, the server side
//! parses back to the same request, pipelined, and a prefix is incomplete.

use bytes::{Bytes, BytesMut};
use data::command::StoreMode;
use data::limits::{Limits, KEY_BYTES_MAX};
use data::protocol::client as enc;
use data::protocol::{parse_request, Request, Storage};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Bytes> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9_:.-]{{1,{KEY_BYTES_MAX}}}"))
        .expect("valid regex")
        .prop_map(Bytes::from)
}

fn mode() -> impl Strategy<Value = StoreMode> {
    prop_oneof![
        Just(StoreMode::Set),
        Just(StoreMode::Add),
        Just(StoreMode::Replace),
        Just(StoreMode::Append),
        Just(StoreMode::Prepend),
        Just(StoreMode::Cas)
    ]
}

fn exptime() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), -5i64..5, any::<i32>().prop_map(i64::from)]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (proptest::collection::vec(key(), 1..20), any::<bool>())
            .prop_map(|(keys, with_cas)| Request::Get { keys, with_cas }),
        (
            exptime(),
            proptest::collection::vec(key(), 1..5),
            any::<bool>()
        )
            .prop_map(|(exptime, keys, with_cas)| Request::GetAndTouch {
                exptime,
                keys,
                with_cas
            }),
        (
            mode(),
            key(),
            any::<u32>(),
            exptime(),
            proptest::collection::vec(any::<u8>(), 0..2048),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(mode, key, flags, exptime, data, cas, noreply)| Request::Store(Storage {
                    mode,
                    key,
                    flags,
                    exptime,
                    data: Bytes::from(data),
                    cas_unique: if mode == StoreMode::Cas { cas } else { 0 },
                    noreply,
                })
            ),
        (key(), any::<bool>()).prop_map(|(key, noreply)| Request::Delete { key, noreply }),
        (key(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(key, delta, incr, noreply)| Request::Arith {
                key,
                delta,
                incr,
                noreply
            }
        ),
        (key(), exptime(), any::<bool>()).prop_map(|(key, exptime, noreply)| Request::Touch {
            key,
            exptime,
            noreply
        }),
        (0i64..100_000, any::<bool>())
            .prop_map(|(delay, noreply)| Request::FlushAll { delay, noreply }),
        Just(Request::Version),
        any::<bool>().prop_map(|noreply| Request::Verbosity { noreply }),
    ]
}

fn encode(request: &Request, out: &mut BytesMut) {
    assert!(
        enc::encode_request(out, request).unwrap(),
        "not generated: {request:?}"
    );
}

proptest! {
    #[test]
    fn parse_of_encode_is_identity(requests in proptest::collection::vec(request(), 1..8), split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for request in &requests {
            encode(request, &mut wire);
        }
        let limits = Limits::default();
        // Pipelined in one buffer: every request comes back, in order.
        let mut at = 0;
        for request in &requests {
            let (parsed, consumed) = parse_request(&wire[at..], &limits).unwrap().expect("complete");
            prop_assert_eq!(&parsed, request);
            at += consumed;
        }
        prop_assert_eq!(at, wire.len());
        // Any prefix shorter than the first request is incomplete, never an error.
        let mut one = BytesMut::new();
        encode(&requests[0], &mut one);
        let cut = split.index(one.len());
        prop_assert_eq!(parse_request(&wire[..cut], &limits), Ok(None));
    }

    /// Whatever the bytes, the parser never panics, never claims more than it
    /// was given, and never returns a key or value over the limits.
    #[test]
    fn parser_respects_limits(input in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b' '), Just(b'\n'), Just(b'\r')], 0..600)) {
        let limits = Limits { item_bytes_max: 64 };
        if let Ok(Some((request, consumed))) = parse_request(&input, &limits) {
            prop_assert!(consumed <= input.len());
            match request {
                Request::Get { keys, .. } | Request::GetAndTouch { keys, .. } => {
                    prop_assert!(keys.iter().all(|k| !k.is_empty() && k.len() <= KEY_BYTES_MAX));
                }
                Request::Store(s) => prop_assert!(s.data.len() <= 64 && s.key.len() <= KEY_BYTES_MAX),
                _ => {}
            }
        }
    }
}
