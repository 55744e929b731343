//! Fuzzes the server's binary-protocol parser (`data::protocol::binary`),
//! checking properties of what it returns and not only that it does not
//! panic:
//! - `Close` only for a first byte other than 0x80;
//! - every byte count it reports is within the input, and with what it
//!   discards adds up to the packet's declared length (header and body);
//! - an accepted request took exactly its declared length, and every proper
//!   prefix of it (sampled) is incomplete; parsing it followed by another
//!   request gives the same request;
//! - keys are 1..=250 bytes where the command has one, values within the
//!   item limit; a value over it is `TooLarge` (a store, nothing else), with
//!   the header, extras and key consumed and the value discarded;
//! - an accepted request re-encoded by the client side (`put_request`)
//!   parses back to itself;
//! - the response the request's outcome gets is one whole packet that the
//!   client side reads back with the request's opcode and opaque.
#![no_main]

use bytes::{Bytes, BytesMut};
use data::limits::{Limits, KEY_BYTES_MAX};
use data::protocol::auth::SASL_MECH_BYTES_MAX;
use data::protocol::binary::{
    opcode, parse_binary, parse_response, put_request, refuse_unauthenticated, BinaryCommand,
    BinaryError, BinaryRequest, Render, Status, ARITH_NO_CREATE, HEADER_BYTES, REQUEST_MAGIC,
};
use data::state::Outcome;
use libfuzzer_sys::fuzz_target;

/// Small, so that values over the limit are cheap to reach.
const LIMITS: Limits = Limits { item_bytes_max: 64 };

/// Proper prefixes checked per request: each costs a parse.
const PREFIX_SAMPLES_MAX: usize = 8;

fuzz_target!(|input: &[u8]| {
    check(input);
    // The same bytes as a request packet, so that most inputs get past the
    // magic byte.
    if let Some((_, rest)) = input.split_first() {
        let mut packet = vec![REQUEST_MAGIC];
        packet.extend_from_slice(rest);
        check(&packet);
    }
});

fn declared_len(input: &[u8]) -> Option<u64> {
    let body = u32::from_be_bytes(input.get(8..12)?.try_into().ok()?);
    Some(HEADER_BYTES as u64 + u64::from(body))
}

fn check(input: &[u8]) {
    // Under SASL before authentication: a refusal covers the whole packet
    // and closes; what it lets through is parsed as usual.
    if let Some(refused) = refuse_unauthenticated(input) {
        let BinaryError::Reply {
            status,
            consumed,
            discard,
            close,
            ..
        } = refused
        else {
            panic!("a refusal is a reply: {refused:?}");
        };
        assert!(close && status == Status::AuthError);
        assert!(consumed <= input.len());
        assert_eq!(consumed as u64 + discard, declared_len(input).unwrap());
    }
    match parse_binary(input, &LIMITS) {
        Ok(None) => assert!(
            input.len() < HEADER_BYTES || declared_len(input).unwrap() > input.len() as u64,
            "incomplete although the whole packet is there"
        ),
        Err(BinaryError::Close) => assert_ne!(input[0], REQUEST_MAGIC),
        Err(BinaryError::Reply {
            consumed, discard, ..
        }) => {
            assert!(consumed <= input.len() && consumed >= HEADER_BYTES);
            assert_eq!(consumed as u64 + discard, declared_len(input).unwrap());
        }
        Err(BinaryError::TooLarge {
            echo,
            consumed,
            discard,
            key,
            ..
        }) => {
            let (loud, _) = data::protocol::binary::loud(echo.opcode);
            assert!(matches!(
                loud,
                opcode::SET | opcode::ADD | opcode::REPLACE | opcode::APPEND | opcode::PREPEND
            ));
            assert!(discard > LIMITS.item_bytes_max as u64);
            assert!(consumed <= input.len());
            assert_eq!(consumed as u64 + discard, declared_len(input).unwrap());
            assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX);
        }
        Ok(Some((request, consumed))) => {
            assert_eq!(consumed as u64, declared_len(input).unwrap());
            check_request(&request);
            let step = (consumed / PREFIX_SAMPLES_MAX).max(1);
            for cut in (0..consumed).step_by(step) {
                assert_eq!(
                    parse_binary(&input[..cut], &LIMITS),
                    Ok(None),
                    "cut at {cut}"
                );
            }
            let mut followed = input[..consumed].to_vec();
            followed.extend_from_slice(&encode(&request));
            assert_eq!(
                parse_binary(&followed, &LIMITS),
                Ok(Some((request.clone(), consumed)))
            );
            let again = encode(&request);
            assert_eq!(
                parse_binary(&again, &LIMITS),
                Ok(Some((request.clone(), again.len())))
            );
            check_response(&request);
        }
    }
}

fn check_request(request: &BinaryRequest) {
    let key_ok = |key: &Bytes| !key.is_empty() && key.len() <= KEY_BYTES_MAX;
    match &request.command {
        BinaryCommand::Get { key, .. }
        | BinaryCommand::GetAndTouch { key, .. }
        | BinaryCommand::Touch { key, .. }
        | BinaryCommand::Delete { key, .. }
        | BinaryCommand::Arith { key, .. } => assert!(key_ok(key)),
        BinaryCommand::Store { key, data, .. } => {
            assert!(key_ok(key));
            assert!(data.len() <= LIMITS.item_bytes_max);
        }
        BinaryCommand::Stat { group } => assert!(group.len() <= KEY_BYTES_MAX),
        BinaryCommand::Flush { delay } => assert!(*delay >= 0),
        BinaryCommand::Noop
        | BinaryCommand::Version
        | BinaryCommand::Quit
        | BinaryCommand::SaslListMechs => {}
        BinaryCommand::SaslAuth { mech, message, .. } => {
            assert!(!mech.is_empty() && mech.len() <= SASL_MECH_BYTES_MAX);
            assert!(message.len() <= LIMITS.item_bytes_max);
        }
    }
}

/// The request as a client would write it.
fn encode(request: &BinaryRequest) -> Vec<u8> {
    let echo = request.echo;
    let mut out = BytesMut::new();
    let mut put = |cas: u64, extras: &[u8], key: &[u8], value: &[u8]| {
        put_request(&mut out, echo.opcode, echo.opaque, cas, extras, key, value)
    };
    let u32_of = |n: i64| u32::try_from(n).expect("parsed from 32 bits");
    match &request.command {
        BinaryCommand::Get { key, .. } => put(0, &[], key, &[]),
        BinaryCommand::GetAndTouch { key, exptime, .. } | BinaryCommand::Touch { key, exptime } => {
            put(0, &u32_of(*exptime).to_be_bytes(), key, &[])
        }
        BinaryCommand::Store {
            key,
            flags,
            exptime,
            data,
            cas,
            ..
        } => {
            let (loud, _) = data::protocol::binary::loud(echo.opcode);
            if matches!(loud, opcode::APPEND | opcode::PREPEND) {
                put(*cas, &[], key, data)
            } else {
                let extras = [flags.to_be_bytes(), u32_of(*exptime).to_be_bytes()].concat();
                put(*cas, &extras, key, data)
            }
        }
        BinaryCommand::Delete { key, cas } => put(*cas, &[], key, &[]),
        BinaryCommand::Arith {
            key,
            delta,
            initial,
            exptime,
            cas,
            ..
        } => {
            let extras = [
                delta.to_be_bytes().as_slice(),
                &initial.to_be_bytes(),
                &exptime.to_be_bytes(),
            ]
            .concat();
            put(*cas, &extras, key, &[])
        }
        BinaryCommand::Flush { delay } => {
            if *delay == 0 {
                // Both forms mean now; the short one parses to this too.
                put(0, &[], &[], &[])
            } else {
                put(0, &u32_of(*delay).to_be_bytes(), &[], &[])
            }
        }
        BinaryCommand::Stat { group } => put(0, &[], group, &[]),
        BinaryCommand::Noop
        | BinaryCommand::Version
        | BinaryCommand::Quit
        | BinaryCommand::SaslListMechs => put(0, &[], &[], &[]),
        BinaryCommand::SaslAuth { mech, message, .. } => put(0, &[], mech, message),
    }
    out.to_vec()
}

/// A few outcomes rendered for the request: each is one whole packet (or
/// nothing, for a quiet success) with the request's opcode and opaque.
fn check_response(request: &BinaryRequest) {
    let render = Render {
        echo: request.echo,
        key: Bytes::from_static(b"key"),
    };
    let outcomes = [
        Outcome::Stored { cas: 7 },
        Outcome::NotFound,
        Outcome::Exists,
        Outcome::NotStored,
        Outcome::Number {
            value: u64::from(ARITH_NO_CREATE),
            cas: 9,
            exptime: 0,
        },
        Outcome::Hits(Vec::new()),
    ];
    for outcome in &outcomes {
        let mut out = BytesMut::new();
        render.put_outcome(&mut out, outcome);
        if out.is_empty() {
            assert!(request.quiet, "only a quiet opcode leaves a response out");
            continue;
        }
        let (response, used) = parse_response(&out)
            .expect("a response packet")
            .expect("whole");
        assert_eq!(used, out.len(), "one packet");
        assert_eq!(
            (response.opcode, response.opaque),
            (request.echo.opcode, request.echo.opaque)
        );
    }
}
