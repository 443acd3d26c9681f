//! Property tests of the parsers: whatever bytes arrive, split however,
//! the parser never panics, never consumes more than it was given, and a
//! valid request is found the same way whatever the split.

use proptest::prelude::*;

use super::{Framing, ParseLimits, Parser};

fn drain(parser: &mut Parser) -> Vec<Result<Vec<u8>, u16>> {
    let mut out = Vec::new();
    while let Some(parsed) = parser.next_request() {
        out.push(parsed.map(|r| r.target).map_err(|m| m.refusal.code()));
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..6000), split in 0usize..6000) {
        let mut parser = Parser::new(ParseLimits::default());
        let split = split.min(bytes.len());
        parser.feed(&bytes[..split]);
        let _ = drain(&mut parser);
        parser.feed(&bytes[split..]);
        let _ = drain(&mut parser);
    }

    #[test]
    fn line_requests_parse_the_same_however_they_are_split(
        paths in proptest::collection::vec("[a-z0-9/._-]{1,40}", 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let wire: Vec<u8> = paths.iter().flat_map(|p| format!("{p}\n").into_bytes()).collect();
        let mut whole = Parser::new(ParseLimits::default());
        whole.feed(&wire);
        let expected = drain(&mut whole);
        prop_assert_eq!(expected.len(), paths.len());

        let mut pieces = Parser::new(ParseLimits::default());
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort();
        let mut got = Vec::new();
        let mut from = 0;
        for point in points.into_iter().chain([wire.len()]) {
            pieces.feed(&wire[from..point]);
            got.extend(drain(&mut pieces));
            from = point;
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn http_targets_survive_percent_encoding(path in "[a-zA-Z0-9 ._~!$&'()*+,;=:@/-]{0,60}") {
        let encoded: String = path.bytes().map(|b| format!("%{b:02X}")).collect();
        let request = format!("GET /{encoded} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut parser = Parser::new(ParseLimits::default());
        parser.feed(request.as_bytes());
        let parsed = parser.next_request().expect("complete").expect("valid");
        prop_assert!(matches!(parsed.framing, Framing::Http(_)));
        // Empty segments at the front are skipped (the sandbox skips the rest).
        prop_assert_eq!(parsed.target, path.trim_start_matches('/').as_bytes());
    }
}
