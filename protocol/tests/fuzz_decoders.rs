//! Property tests for every decoder of untrusted bytes: frames, whole WebSocket frames, the JSON
//! text form, length headers and capability tokens.
//!
//! Two kinds of input: bytes with no structure (random, or random but framed, or a soup of
//! MessagePack and JSON fragments that reaches deeper into the decoders), and valid messages
//! built from strategies for every message type, which must survive both encodings, any split of
//! the stream, and byte flips without a panic. The cargo-fuzz targets in `protocol/fuzz/` drive
//! the same decoders with coverage feedback; these tests run on every `cargo test`.
//!
//! Case counts are set so the file runs in a few seconds in a debug build. A failing case is
//! shrunk, printed, and saved in `fuzz_decoders.proptest-regressions` beside this file, which
//! replays it first on every later run.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a panic there is a test failure"
)]

use airlock_protocol::codec::{
    self, CodecError, DEFAULT_MAX_FRAME_LEN, FrameLimit, HARD_MAX_FRAME_LEN, HEADER_LEN,
    MAX_NESTING,
};
use airlock_protocol::token::{self, MAX_TOKEN_LEN};
use airlock_protocol::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Strategies for valid messages.

/// A JSON number, string, bool or null that survives both encodings unchanged. Floats have at
/// most 15 significant digits: serde_json's default parser (without its `float_roundtrip`
/// feature) may move a longer decimal by one ulp, so the JSON form only round-trips those.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-(1i64 << 20)..(1i64 << 20), 0u32..8)
            .prop_map(|(m, e)| Value::from(m as f64 / f64::from(1u32 << e))),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON, nested a few levels: what widgets and plotting libraries put in metadata.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mime_bundle() -> impl Strategy<Value = MimeBundle> {
    let mime = prop_oneof![
        Just("text/plain".to_owned()),
        Just("text/html".to_owned()),
        Just("image/png".to_owned()),
        Just("application/json".to_owned()),
        Just("application/vnd.jupyter.widget-view+json".to_owned()),
        "[a-z]{1,8}/[a-z0-9.+-]{1,12}",
    ];
    btree_map(
        mime,
        prop_oneof!["\\PC{0,40}".prop_map(Value::String), json_value()],
        0..4,
    )
}

fn metadata() -> impl Strategy<Value = Metadata> {
    btree_map("[a-z/_-]{1,10}", json_value(), 0..3).prop_map(|m| m.into_iter().collect())
}

fn output() -> impl Strategy<Value = Output> {
    prop_oneof![
        (
            prop_oneof![Just(StreamName::Stdout), Just(StreamName::Stderr)],
            "\\PC{0,40}"
        )
            .prop_map(|(name, text)| Output::Stream { name, text }),
        (
            mime_bundle(),
            metadata(),
            proptest::option::of("[a-z0-9-]{1,12}")
        )
            .prop_map(|(data, metadata, display_id)| Output::DisplayData {
                data,
                metadata,
                display_id
            }),
        (mime_bundle(), metadata(), "[a-z0-9-]{1,12}").prop_map(|(data, metadata, display_id)| {
            Output::UpdateDisplayData {
                data,
                metadata,
                display_id,
            }
        }),
        (any::<u32>(), mime_bundle(), metadata()).prop_map(|(execution_count, data, metadata)| {
            Output::ExecuteResult {
                execution_count,
                data,
                metadata,
            }
        }),
        ("\\PC{0,12}", "\\PC{0,20}", vec("\\PC{0,20}", 0..4)).prop_map(
            |(ename, evalue, traceback)| Output::Error {
                ename,
                evalue,
                traceback
            }
        ),
        any::<bool>().prop_map(|wait| Output::ClearOutput { wait }),
        Just(Output::Unknown),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Viewer), Just(Role::Editor), Just(Role::Owner)]
}

fn kernel_state() -> impl Strategy<Value = KernelState> {
    prop_oneof![
        Just(KernelState::Starting),
        Just(KernelState::Idle),
        Just(KernelState::Busy),
        Just(KernelState::Restarting),
        Just(KernelState::Dead),
        Just(KernelState::Unknown),
    ]
}

fn death_cause() -> impl Strategy<Value = DeathCause> {
    prop_oneof![
        any::<i32>().prop_map(|code| DeathCause::Exited { code }),
        (any::<i32>(), "SIG[A-Z]{2,6}")
            .prop_map(|(signal, name)| DeathCause::Signaled { signal, name }),
        proptest::option::of(any::<u64>())
            .prop_map(|limit_bytes| DeathCause::OutOfMemory { limit_bytes }),
        any::<u64>().prop_map(|silent_ms| DeathCause::HeartbeatLost { silent_ms }),
        "\\PC{0,30}".prop_map(|reason| DeathCause::StartFailed { reason }),
        Just(DeathCause::Unknown),
    ]
}

fn kernel_status() -> impl Strategy<Value = KernelStatus> {
    prop_oneof![
        Just(KernelStatus::Starting),
        Just(KernelStatus::Idle),
        Just(KernelStatus::Busy),
        Just(KernelStatus::Restarting),
        death_cause().prop_map(|cause| KernelStatus::Dead { cause }),
    ]
}

const ERROR_CODES: [ErrorCode; 16] = [
    ErrorCode::BadFrame,
    ErrorCode::FrameTooLarge,
    ErrorCode::VersionUnsupported,
    ErrorCode::HelloExpected,
    ErrorCode::TokenInvalid,
    ErrorCode::TokenExpired,
    ErrorCode::WrongDocument,
    ErrorCode::StaleEpoch,
    ErrorCode::Forbidden,
    ErrorCode::KernelUnavailable,
    ErrorCode::Busy,
    ErrorCode::UnknownMessage,
    ErrorCode::Internal,
    ErrorCode::DocumentMoved,
    ErrorCode::BadRequest,
    ErrorCode::Unknown,
];

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            "[A-Za-z0-9._-]{0,60}",
            "\\PC{0,20}"
        )
            .prop_map(|(min, max, token, client)| ClientMessage::Hello(Hello {
                versions: VersionRange { min, max },
                token,
                client,
            })),
        (any::<u64>(), "\\PC{0,80}", any::<bool>()).prop_map(
            |(client_ref, code, store_history)| {
                ClientMessage::Execute(ExecuteRequest {
                    client_ref,
                    code,
                    store_history,
                })
            }
        ),
        Just(ClientMessage::Interrupt),
        Just(ClientMessage::Restart),
        any::<u64>().prop_map(|nonce| ClientMessage::Ping { nonce }),
        blob().prop_map(|state_vector| ClientMessage::SyncStep1(SyncStep1 { state_vector })),
        (any::<u64>(), blob())
            .prop_map(|(seq, update)| ClientMessage::Update(ClientUpdate { seq, update })),
        blob().prop_map(|update| ClientMessage::Awareness(AwarenessUpdate { update })),
        (
            any::<u64>(),
            proptest::collection::vec("[a-z0-9-]{1,12}", 0..4),
            any::<bool>()
        )
            .prop_map(
                |(client_ref, cells, replay)| ClientMessage::RunCells(RunCells {
                    client_ref,
                    cells,
                    replay
                })
            ),
        (any::<u64>(), cell_edit(), any::<bool>()).prop_map(|(client_ref, edit, run)| {
            ClientMessage::EditCells(EditCells {
                client_ref,
                edits: vec![edit],
                run,
            })
        }),
        any::<u64>().prop_map(|client_ref| ClientMessage::Graph { client_ref }),
        any::<u64>().prop_map(|client_ref| ClientMessage::Export { client_ref }),
        Just(ClientMessage::Unknown),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let welcome = (
        any::<u32>(),
        any::<u64>(),
        "\\PC{0,20}",
        "\\PC{0,20}",
        role(),
        kernel_state(),
        "[0-9.a-z-]{0,12}",
    )
        .prop_map(
            |(version, session, document, user, role, kernel, node_version)| {
                ServerMessage::Welcome(Welcome {
                    version,
                    session: SessionId(session),
                    document,
                    user,
                    role,
                    kernel,
                    node_version,
                })
            },
        );
    let queued = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        "\\PC{0,20}",
        "\\PC{0,60}",
    )
        .prop_map(|(run, session, client_ref, user, code)| {
            ServerMessage::Queued(RunQueued {
                run: RunId(run),
                session: SessionId(session),
                client_ref,
                user,
                code,
                cell: (client_ref % 2 == 0).then(|| format!("cell-{run}")),
            })
        });
    let status = prop_oneof![
        Just(RunStatus::Ok),
        Just(RunStatus::Error),
        Just(RunStatus::Aborted),
        Just(RunStatus::Unknown),
    ];
    let done = (any::<u64>(), status, proptest::option::of(any::<u32>())).prop_map(
        |(run, status, execution_count)| {
            ServerMessage::Done(RunDone {
                run: RunId(run),
                status,
                execution_count,
            })
        },
    );
    let error = (
        proptest::sample::select(ERROR_CODES.to_vec()),
        "\\PC{0,40}",
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(code, message, client_ref, fatal)| {
            ServerMessage::Error(ErrorReply {
                code,
                message,
                client_ref,
                fatal,
            })
        });
    prop_oneof![
        welcome,
        queued,
        (any::<u64>(), output()).prop_map(|(run, output)| ServerMessage::Output(RunOutput {
            run: RunId(run),
            output
        })),
        done,
        kernel_status().prop_map(ServerMessage::Kernel),
        error,
        any::<u64>().prop_map(|nonce| ServerMessage::Pong { nonce }),
        blob().prop_map(|update| ServerMessage::SyncStep2(SyncStep2 { update })),
        blob().prop_map(|update| ServerMessage::Update(DocUpdate { update })),
        any::<u64>().prop_map(|seq| ServerMessage::Ack(UpdateAck { seq, refused: None })),
        ("[a-z0-9-]{1,12}", cell_state())
            .prop_map(|(cell, state)| ServerMessage::Cell(CellStatus { cell, state })),
        (
            "[a-z0-9-]{1,12}",
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(output(), 0..3)
        )
            .prop_map(|(cell, execution_count, outputs)| {
                ServerMessage::CellOutputs(CellOutputs {
                    cell,
                    execution_count,
                    outputs,
                })
            }),
        Just(ServerMessage::Unknown),
    ]
}

fn blob() -> impl Strategy<Value = Blob> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Blob)
}

fn cell_state() -> impl Strategy<Value = CellState> {
    prop_oneof![
        Just(CellState::Idle),
        Just(CellState::Queued),
        Just(CellState::Running),
        Just(CellState::Stale),
        "\\PC{0,40}".prop_map(|message| CellState::Error { message }),
    ]
}

fn cell_edit() -> impl Strategy<Value = CellEdit> {
    prop_oneof![
        ("[a-z0-9-]{1,12}", "\\PC{0,40}")
            .prop_map(|(cell, source)| CellEdit::SetSource { cell, source }),
        (
            0usize..100,
            proptest::option::of("[a-z0-9-]{1,12}"),
            "\\PC{0,40}"
        )
            .prop_map(|(index, cell, source)| CellEdit::Insert {
                index,
                cell,
                kind: CellKind::Sql,
                source
            }),
        "[a-z0-9-]{1,12}".prop_map(|cell| CellEdit::Delete { cell }),
        ("[a-z0-9-]{1,12}", 0usize..100).prop_map(|(cell, to)| CellEdit::Move { cell, to }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Strategies for hostile bytes.

/// Limits a node might be configured with, from tiny to past the hard cap (which clamps).
fn frame_limit() -> impl Strategy<Value = FrameLimit> {
    prop_oneof![
        Just(FrameLimit::default()),
        (0usize..300).prop_map(FrameLimit::new),
        Just(FrameLimit::new(usize::MAX)),
    ]
}

/// Pieces of MessagePack that the message types use, so random concatenations often get past
/// the first byte: map and array headers, the tag keys and values, integers, nil, strings.
fn msgpack_fragment() -> impl Strategy<Value = Vec<u8>> {
    let tags = [
        "type",
        "hello",
        "execute",
        "ping",
        "output",
        "welcome",
        "kernel",
        "error",
        "output_type",
        "display_data",
        "stream",
        "metadata",
        "data",
        "state",
        "dead",
        "cause",
        "kind",
        "code",
        "nonce",
        "run",
        "versions",
        "min",
        "max",
        "token",
    ];
    prop_oneof![
        (0x80u8..=0x8f).prop_map(|b| vec![b]),
        (0x90u8..=0x9f).prop_map(|b| vec![b]),
        proptest::sample::select(tags.to_vec()).prop_map(|t| {
            let mut v = vec![0xa0 | t.len() as u8];
            v.extend_from_slice(t.as_bytes());
            v
        }),
        Just(vec![0xc0]),
        Just(vec![0xc2]),
        Just(vec![0xc3]),
        (0u8..0x80).prop_map(|b| vec![b]),
        // Long length headers: map32, array32, str32, bin32 with hostile counts.
        (
            prop_oneof![Just(0xdfu8), Just(0xdd), Just(0xdb), Just(0xc6)],
            any::<u32>()
        )
            .prop_map(|(marker, n)| {
                let mut v = vec![marker];
                v.extend_from_slice(&n.to_be_bytes());
                v
            }),
        (0xccu8..=0xd3, vec(any::<u8>(), 1..9)).prop_map(|(marker, rest)| {
            let mut v = vec![marker];
            v.extend(rest);
            v
        }),
        any::<u8>().prop_map(|b| vec![b]),
    ]
}

/// A payload and the length its header declares.
fn framed(payload: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (payload, -3i64..=3, any::<bool>()).prop_map(|(payload, skew, honest)| {
        let declared = if honest {
            payload.len() as u64
        } else {
            (payload.len() as i64 + skew).max(0) as u64
        };
        let mut out = (declared as u32).to_be_bytes().to_vec();
        out.extend(payload);
        out
    })
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        framed(vec(any::<u8>(), 0..256)),
        framed(vec(msgpack_fragment(), 0..40).prop_map(|f| f.concat())),
    ]
}

/// Pieces of JSON the message types use.
fn json_fragment() -> impl Strategy<Value = String> {
    let tokens = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"type\"",
        "\"hello\"",
        "\"execute\"",
        "\"ping\"",
        "\"output\"",
        "\"output_type\"",
        "\"display_data\"",
        "\"metadata\"",
        "\"data\"",
        "\"kernel\"",
        "\"state\"",
        "\"dead\"",
        "\"cause\"",
        "\"kind\"",
        "\"nonce\"",
        "\"code\"",
        "\"versions\"",
        "\"token\"",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1e400",
        "18446744073709551616",
        "\"\\ud800\"",
        "\"\\u0000\"",
        " ",
    ];
    prop_oneof![
        4 => proptest::sample::select(tokens.to_vec()).prop_map(str::to_owned),
        1 => "\\PC{0,4}",
    ]
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        vec(json_fragment(), 0..40).prop_map(|f| f.concat()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Invariants.

/// The length a frame's header declares, if it has a header.
fn declared_len(bytes: &[u8]) -> Option<usize> {
    bytes
        .first_chunk::<HEADER_LEN>()
        .map(|h| u32::from_be_bytes(*h) as usize)
}

/// What every binary decoder must promise about any input: no panic (the caller's job), errors
/// map to peer-facing codes, a frame over the limit never yields a message, a frame never claims
/// more bytes than it was given, and the stream and WebSocket decoders agree.
fn check_frame_decoders<M>(bytes: &[u8], limit: FrameLimit) -> Result<(), TestCaseError>
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let declared = declared_len(bytes);
    let stream = codec::decode_frame::<M>(bytes, limit);
    match (&stream, declared) {
        (Ok(Some((_, used))), Some(declared)) => {
            prop_assert!(*used <= bytes.len());
            prop_assert_eq!(*used, HEADER_LEN + declared);
            prop_assert!(declared <= limit.get());
        }
        (Ok(Some(_)), None) => prop_assert!(false, "a message from fewer than 4 bytes"),
        (Ok(None), Some(declared)) => {
            prop_assert!(declared <= limit.get());
            prop_assert!(HEADER_LEN + declared > bytes.len());
        }
        (Ok(None), None) => {}
        (Err(CodecError::TooLarge { len, max }), Some(declared)) => {
            prop_assert_eq!(*len, declared);
            prop_assert_eq!(*max, limit.get());
            prop_assert!(declared > limit.get());
        }
        (Err(CodecError::Decode(_) | CodecError::LengthMismatch { .. }), Some(declared)) => {
            prop_assert!(declared <= limit.get());
            prop_assert!(HEADER_LEN + declared <= bytes.len());
        }
        (Err(other), _) => prop_assert!(false, "decode_frame failed oddly: {other:?}"),
    }
    if let Err(err) = &stream {
        prop_assert!(matches!(
            err.code(),
            ErrorCode::BadFrame | ErrorCode::FrameTooLarge
        ));
    }

    let whole = codec::decode_whole_frame::<M>(bytes, limit);
    match &whole {
        Ok(msg) => {
            prop_assert_eq!(declared, Some(bytes.len() - HEADER_LEN));
            prop_assert!(bytes.len() - HEADER_LEN <= limit.get());
            // A whole frame is also a frame on a stream, and decodes the same.
            match &stream {
                Ok(Some((streamed, used))) => {
                    prop_assert_eq!(streamed, msg);
                    prop_assert_eq!(*used, bytes.len());
                }
                other => prop_assert!(false, "whole frame decoded, stream said {other:?}"),
            }
            relay_in_binary(msg)?;
        }
        Err(err) => {
            prop_assert!(matches!(
                err.code(),
                ErrorCode::BadFrame | ErrorCode::FrameTooLarge
            ));
            if let Ok(Some((_, used))) = &stream {
                prop_assert!(
                    *used < bytes.len(),
                    "stream decoded all of it, whole did not"
                );
            }
        }
    }
    Ok(())
}

fn check_json_decoder<M>(text: &str, limit: FrameLimit) -> Result<(), TestCaseError>
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    match codec::decode_json::<M>(text, limit) {
        Ok(msg) => {
            prop_assert!(text.len() <= limit.get());
            // Whatever a browser sent, a node can relay in binary without loss and back in JSON.
            // (Not compared after JSON: serde_json's default float parsing may move an ulp.)
            relay_in_binary(&msg)?;
            let again =
                codec::encode_json(&msg, FrameLimit::new(HARD_MAX_FRAME_LEN)).map_err(fail)?;
            codec::decode_json::<M>(&again, FrameLimit::new(HARD_MAX_FRAME_LEN)).map_err(fail)?;
        }
        Err(CodecError::TooLarge { len, .. }) => prop_assert!(len > limit.get()),
        Err(CodecError::Json(_)) => prop_assert!(text.len() <= limit.get()),
        Err(other) => prop_assert!(false, "decode_json failed oddly: {other:?}"),
    }
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(err.to_string())
}

/// Encodes a decoded message again and checks the binary form gives it back unchanged.
fn relay_in_binary<M>(msg: &M) -> Result<(), TestCaseError>
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let limit = FrameLimit::new(HARD_MAX_FRAME_LEN);
    let frame = codec::encode_frame(msg, limit).map_err(fail)?;
    prop_assert_eq!(
        &codec::decode_whole_frame::<M>(&frame, limit).map_err(fail)?,
        msg
    );
    Ok(())
}

fn flip(bytes: &mut [u8], flips: &[(proptest::sample::Index, u8)]) {
    if bytes.is_empty() {
        return;
    }
    for (at, mask) in flips {
        let i = at.index(bytes.len());
        bytes[i] ^= (*mask).max(1);
    }
}

/// The key the token tests sign with: fixed, so a failing case replays exactly.
fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A token over arbitrary claim bytes, signed properly, so verification gets past the signature
/// and into the claims parser.
fn sign_raw_claims(claims: &[u8], key: &SigningKey) -> String {
    let mut token = format!("v1.{}", B64.encode(claims));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&B64.encode(signature.to_bytes()));
    token
}

fn claims() -> impl Strategy<Value = Claims> {
    (
        "\\PC{0,20}",
        "\\PC{0,20}",
        role(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(doc, user, role, epoch, exp)| Claims {
            doc,
            user,
            role,
            epoch,
            exp,
        })
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn frame_decoders_survive_hostile_bytes(bytes in hostile_bytes(), limit in frame_limit()) {
        check_frame_decoders::<ClientMessage>(&bytes, limit)?;
        check_frame_decoders::<ServerMessage>(&bytes, limit)?;
    }

    #[test]
    fn json_decoder_survives_hostile_text(text in hostile_text(), limit in frame_limit()) {
        check_json_decoder::<ClientMessage>(&text, limit)?;
        check_json_decoder::<ServerMessage>(&text, limit)?;
    }

    #[test]
    fn payload_len_is_the_header_within_the_limit(header in any::<[u8; 4]>(), max in any::<usize>()) {
        let limit = FrameLimit::new(max);
        prop_assert_eq!(limit.get(), max.min(HARD_MAX_FRAME_LEN));
        let len = u32::from_be_bytes(header) as usize;
        match limit.payload_len(header) {
            Ok(got) => {
                prop_assert_eq!(got, len);
                prop_assert!(got <= limit.get());
            }
            Err(CodecError::TooLarge { len: got, max }) => {
                prop_assert_eq!(got, len);
                prop_assert_eq!(max, limit.get());
                prop_assert!(len > limit.get());
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn verify_survives_hostile_tokens(
        token in prop_oneof![
            any::<String>(),
            "v1\\.[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,100}",
            "v1\\.[A-Za-z0-9_.=+/-]{0,200}",
            (MAX_TOKEN_LEN - 8..MAX_TOKEN_LEN + 8).prop_map(|n| format!("v1.{}", "A".repeat(n))),
        ],
        now in any::<u64>(),
    ) {
        let key = signing_key().verifying_key();
        match token::verify(&token, &key, now) {
            Ok(claims) => prop_assert!(false, "unsigned junk verified: {claims:?}"),
            Err(TokenError::Malformed(_) | TokenError::BadSignature) => {}
            Err(other) => prop_assert!(false, "junk got past the signature: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn verify_survives_signed_junk_claims(
        claims in prop_oneof![
            vec(any::<u8>(), 0..120),
            vec(json_fragment(), 0..30).prop_map(|f| f.concat().into_bytes()),
        ],
        now in any::<u64>(),
    ) {
        let key = signing_key();
        let token = sign_raw_claims(&claims, &key);
        match token::verify(&token, &key.verifying_key(), now) {
            Ok(got) => prop_assert!(got.exp > now),
            Err(TokenError::Malformed(_) | TokenError::Expired { .. }) => {}
            Err(other) => prop_assert!(false, "a good signature refused as {other:?}"),
        }
    }

    #[test]
    fn tokens_round_trip_and_expire(claims in claims(), now in any::<u64>()) {
        let key = signing_key();
        let token = token::sign(&claims, &key);
        prop_assert!(token.starts_with("v1."));
        let got = token::verify(&token, &key.verifying_key(), now);
        if claims.exp > now {
            prop_assert_eq!(got, Ok(claims));
        } else {
            prop_assert_eq!(got, Err(TokenError::Expired { ago_secs: now - claims.exp }));
        }
    }

    #[test]
    fn tampered_tokens_never_verify(
        claims in claims(),
        edits in vec((any::<proptest::sample::Index>(), proptest::char::any()), 1..4),
    ) {
        let key = signing_key();
        let token = token::sign(&claims, &key);
        let mut chars: Vec<char> = token.chars().collect();
        for (at, c) in &edits {
            let i = at.index(chars.len());
            chars[i] = *c;
        }
        let tampered: String = chars.into_iter().collect();
        prop_assume!(tampered != token);
        let got = token::verify(&tampered, &key.verifying_key(), 0);
        prop_assert!(got.is_err(), "tampered token verified: {tampered}");
    }

    #[test]
    fn client_messages_round_trip(msg in client_message()) {
        let blob = matches!(
            msg,
            ClientMessage::SyncStep1(_) | ClientMessage::Update(_) | ClientMessage::Awareness(_)
        );
        round_trip(&msg, !blob)?;
    }

    #[test]
    fn server_messages_round_trip(msg in server_message()) {
        let blob = matches!(
            msg,
            ServerMessage::SyncStep2(_) | ServerMessage::Update(_) | ServerMessage::Awareness(_)
        );
        round_trip(&msg, !blob)?;
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        msgs in vec(server_message(), 1..5),
        cuts in vec(any::<proptest::sample::Index>(), 0..8),
    ) {
        let limit = FrameLimit::default();
        let mut stream = Vec::new();
        for msg in &msgs {
            stream.extend(codec::encode_frame(msg, limit).map_err(fail)?);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        // Feed the stream in chunks, as a QUIC reader would, decoding whenever a frame completes.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut from = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[from..cut]);
            from = cut;
            while let Some((msg, used)) = codec::decode_frame::<ServerMessage>(&buf, limit)
                .map_err(fail)?
            {
                got.push(msg);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn every_strict_prefix_of_a_frame_asks_for_more(msg in client_message()) {
        let limit = FrameLimit::default();
        let frame = codec::encode_frame(&msg, limit).map_err(fail)?;
        for cut in 0..frame.len() {
            let got = codec::decode_frame::<ClientMessage>(&frame[..cut], limit);
            prop_assert!(matches!(got, Ok(None)), "prefix of {} bytes gave {:?}", cut, got);
            // A WebSocket message cut short is an error, never a message.
            prop_assert!(codec::decode_whole_frame::<ClientMessage>(&frame[..cut], limit).is_err());
        }
    }

    #[test]
    fn flipped_frames_never_panic(
        msg in server_message(),
        flips in vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        keep_header in any::<bool>(),
        limit in frame_limit(),
    ) {
        let mut frame = codec::encode_frame(&msg, FrameLimit::new(HARD_MAX_FRAME_LEN))
            .map_err(fail)?;
        // Flip only payload bytes half the time, so the header stays honest and the flips reach
        // the MessagePack decoder.
        if keep_header {
            flip(&mut frame[HEADER_LEN..], &flips);
        } else {
            flip(&mut frame, &flips);
        }
        check_frame_decoders::<ServerMessage>(&frame, limit)?;
        check_frame_decoders::<ClientMessage>(&frame, limit)?;

        let mut text = codec::encode_json(&msg, FrameLimit::new(HARD_MAX_FRAME_LEN))
            .map_err(fail)?
            .into_bytes();
        flip(&mut text, &flips);
        let text = String::from_utf8_lossy(&text);
        check_json_decoder::<ServerMessage>(&text, limit)?;
        check_json_decoder::<ClientMessage>(&text, limit)?;
    }
}

/// Binary frame, whole WebSocket frame and JSON text all give back the message.
/// Encodes and decodes `msg` in both forms. `same_fields`: whether the two forms carry the same
/// JSON values, which holds for every message without bytes (MessagePack carries bytes as `bin`,
/// JSON as base64 text).
fn round_trip<M>(msg: &M, same_fields: bool) -> Result<(), TestCaseError>
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let limit = FrameLimit::default();
    let frame = codec::encode_frame(msg, limit).map_err(fail)?;
    prop_assert_eq!(declared_len(&frame), Some(frame.len() - HEADER_LEN));
    let (streamed, used) = codec::decode_frame::<M>(&frame, limit)
        .map_err(fail)?
        .ok_or_else(|| TestCaseError::fail("a whole frame asked for more bytes"))?;
    prop_assert_eq!(used, frame.len());
    prop_assert_eq!(&streamed, msg);
    prop_assert_eq!(
        &codec::decode_whole_frame::<M>(&frame, limit).map_err(fail)?,
        msg
    );

    let text = codec::encode_json(msg, limit).map_err(fail)?;
    prop_assert_eq!(&codec::decode_json::<M>(&text, limit).map_err(fail)?, msg);
    if !same_fields {
        return Ok(());
    }
    // The two forms carry the same fields: the JSON value of either decodes to the same message.
    let from_binary: Value = codec::decode_payload(&frame[HEADER_LEN..]).map_err(fail)?;
    let from_text: Value = serde_json::from_str(&text).map_err(fail)?;
    prop_assert_eq!(from_binary, from_text);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Examples.

/// A display output whose metadata holds `{"m": <hole>}`, in both forms, with the hole marked so
/// a test can put deeply nested values there without building them (building and serialising a
/// 100k-deep `serde_json::Value` would itself overflow the stack).
fn nested_metadata_message() -> ServerMessage {
    let mut metadata = Metadata::new();
    metadata.insert("m".into(), Value::String("HOLE".into()));
    ServerMessage::Output(RunOutput {
        run: RunId(1),
        output: Output::DisplayData {
            data: MimeBundle::new(),
            metadata,
            display_id: None,
        },
    })
}

/// How deep the hole in [`nested_metadata_message`] sits: the message map, its `output` map and
/// the `metadata` map.
const HOLE_DEPTH: usize = 3;

/// A binary frame of [`nested_metadata_message`] with `depth` nested one-element arrays in the
/// hole (MessagePack `0x91` is "array of one").
fn nested_frame(depth: usize) -> Vec<u8> {
    let frame = codec::encode_frame(&nested_metadata_message(), FrameLimit::default()).unwrap();
    let hole = b"\xa4HOLE";
    let at = frame.windows(hole.len()).position(|w| w == hole).unwrap();
    let mut payload = frame[HEADER_LEN..at].to_vec();
    payload.extend(std::iter::repeat_n(0x91, depth));
    payload.push(0xc0);
    payload.extend_from_slice(&frame[at + hole.len()..]);
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend(payload);
    out
}

/// The JSON form of [`nested_metadata_message`] with `depth` nested arrays in the hole.
fn nested_json(depth: usize) -> String {
    let text = codec::encode_json(&nested_metadata_message(), FrameLimit::default()).unwrap();
    let nested = "[".repeat(depth) + "null" + &"]".repeat(depth);
    text.replace("\"HOLE\"", &nested)
}

/// Runs `f` on a thread with a 2 MiB stack, the size tokio gives its workers, so a test fails
/// (by aborting) if decoding recurses too deep for a node's real threads.
fn on_worker_sized_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    on_worker_sized_stack(|| {
        let limit = FrameLimit::default();
        for depth in [MAX_NESTING, 1_000, 100_000] {
            let frame = nested_frame(depth);
            let err = codec::decode_whole_frame::<ServerMessage>(&frame, limit).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadFrame, "{depth}: {err}");
            assert!(codec::decode_frame::<ServerMessage>(&frame, limit).is_err());
            // The client side buffers unknown fields too: nesting in a field it does not even
            // read must not overflow either.
            assert!(codec::decode_whole_frame::<ClientMessage>(&frame, limit).is_err());

            let text = nested_json(depth);
            let err = codec::decode_json::<ServerMessage>(&text, limit).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadFrame, "{depth}: {err}");
            assert!(codec::decode_json::<ClientMessage>(&text, limit).is_err());
        }
        // The same nesting inside the claims of a properly signed token.
        let key = signing_key();
        let claims = format!(
            r#"{{"doc":"d","user":"u","role":"owner","epoch":1,"exp":9,"x":{}{}}}"#,
            "[".repeat(1_000),
            "]".repeat(1_000)
        );
        let token = sign_raw_claims(claims.as_bytes(), &key);
        assert!(token.len() <= MAX_TOKEN_LEN);
        // serde_json skips an unknown field without recursing, so this one is simply ignored.
        let got = token::verify(&token, &key.verifying_key(), 0).unwrap();
        assert_eq!(got.doc, "d");
    });
}

#[test]
fn both_forms_accept_the_same_nesting() {
    on_worker_sized_stack(|| {
        let limit = FrameLimit::default();
        let deepest = MAX_NESTING - HOLE_DEPTH;
        let frame = nested_frame(deepest);
        let binary = codec::decode_whole_frame::<ServerMessage>(&frame, limit).unwrap();
        let text = codec::decode_json::<ServerMessage>(&nested_json(deepest), limit).unwrap();
        assert_eq!(binary, text);
        // Dropping and re-encoding the deepest accepted value is fine too.
        assert!(codec::encode_frame(&binary, limit).is_ok());

        let frame = nested_frame(deepest + 1);
        assert!(codec::decode_whole_frame::<ServerMessage>(&frame, limit).is_err());
        assert!(codec::decode_json::<ServerMessage>(&nested_json(deepest + 1), limit).is_err());
    });
}

#[test]
fn a_payload_must_hold_exactly_one_message() {
    let limit = FrameLimit::default();
    let mut frame = codec::encode_frame(&ClientMessage::Ping { nonce: 9 }, limit).unwrap();
    // Two messages in one frame, with a header covering both.
    let inner = frame[HEADER_LEN..].to_vec();
    frame.extend_from_slice(&inner);
    let len = u32::try_from(frame.len() - HEADER_LEN).unwrap();
    frame[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    let err = codec::decode_whole_frame::<ClientMessage>(&frame, limit).unwrap_err();
    assert!(matches!(err, CodecError::LengthMismatch { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::BadFrame);
    assert!(codec::decode_frame::<ClientMessage>(&frame, limit).is_err());
    // The JSON form refuses trailing text the same way.
    let text = codec::encode_json(&ClientMessage::Ping { nonce: 9 }, limit).unwrap();
    assert!(codec::decode_json::<ClientMessage>(&format!("{text}{text}"), limit).is_err());
}

#[test]
fn an_over_limit_header_yields_no_message_whatever_follows() {
    let limit = FrameLimit::new(64);
    let frame = codec::encode_frame(&ClientMessage::Ping { nonce: 1 }, limit).unwrap();
    for declared in [65u32, 1 << 20, u32::MAX] {
        let mut bytes = declared.to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame[HEADER_LEN..]);
        assert!(matches!(
            codec::decode_frame::<ClientMessage>(&bytes, limit),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            codec::decode_whole_frame::<ClientMessage>(&bytes, limit),
            Err(CodecError::TooLarge { .. })
        ));
    }
    // The default limit is what a node runs with unless configured.
    assert_eq!(FrameLimit::default().get(), DEFAULT_MAX_FRAME_LEN);
}

#[test]
fn mime_bundles_keep_their_nested_json() {
    let mut data = MimeBundle::new();
    data.insert("text/plain".into(), Value::String("<Figure>".into()));
    data.insert(
        "application/vnd.plotly.v1+json".into(),
        serde_json::json!({"data": [{"x": [1, 2.5, -3], "y": [null, true, "a"]}], "layout": {}}),
    );
    let mut metadata = Metadata::new();
    metadata.insert("isolated".into(), Value::Bool(true));
    metadata.insert(
        "image/png".into(),
        serde_json::json!({"width": 640, "height": 480}),
    );
    let msg = ServerMessage::Output(RunOutput {
        run: RunId(4),
        output: Output::ExecuteResult {
            execution_count: 2,
            data,
            metadata,
        },
    });
    round_trip(&msg, true).unwrap();
}
