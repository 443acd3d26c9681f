//! Conditional and range requests (RFC 9110 sections 13 and 14), as a
//! static file server answers them: `ETag` and `Last-Modified` as
//! validators, `If-None-Match` and `If-Modified-Since` answered with 304,
//! one byte range answered with 206 (`If-Range` honoured), an unsatisfiable
//! one with 416.
//!
//! The request's conditions are parsed into a small `Copy` value that
//! travels with the request's framing (even while its file is being read
//! elsewhere); they are weighed against the file's size and modification
//! time only when the response is queued, by [`Conditions::select`].
//!
//! The entity tag is nginx's: `"<mtime in hex>-<size in hex>"`, strong,
//! with a `-` before the hex digits of a modification time before 1970
//! (`"-b49d800-2"` for 1964, as nginx writes it). A request validator in any
//! other form cannot match ours, so it is kept as "never matches" rather
//! than as text.
//!
//! `Last-Modified` shows the modification time only where a date can say
//! it truthfully ([`last_modified`]): a time in the future is replaced by
//! the response's own date (RFC 9110 section 8.8.2.1 says MUST), and a
//! time before 1970 is left out (the HTTP dates the kit writes and reads,
//! with `httpdate`, run from 1970 to 9999; nginx writes 1970 instead, so an
//! `If-Modified-Since` of 1970 matches every such file). The date
//! conditions (`If-Modified-Since`, an `If-Range` date) are weighed only
//! against a modification time that `Last-Modified` shows as it is.
//!
//! List-valued headers (RFC 9110 section 5.3) are read whole: every member
//! of `If-None-Match` is compared (section 13.1.2: any member matches),
//! however many there are and however many lines they are split over, and
//! a `Range` split over lines is several ranges. A header that allows one
//! value (`If-Modified-Since`, `If-Range`) sent twice is invalid and
//! ignored, as section 13.1.3 says of an invalid date.

use std::time::{SystemTime, UNIX_EPOCH};

/// What a request asks beyond "the whole file".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    if_none_match: Option<TagList>,
    if_modified_since: Option<i64>,
    range: Option<RangeSpec>,
    if_range: Option<Validator>,
    /// GET (a range applies) rather than HEAD (it does not).
    is_get: bool,
}

/// An entity tag in our own format, weak or strong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag {
    /// Seconds since 1970, negative before.
    mtime: i64,
    size: u64,
    weak: bool,
}

/// `If-None-Match`: `*`, or the tags that could be ours (every one of
/// them; empty, and unallocated, when none could be).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList {
    Any,
    Tags(Vec<EntityTag>),
}

/// `If-Range`: a date, a tag, or something that can never match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validator {
    Date(i64),
    Tag(EntityTag),
    Never,
}

/// One byte range, as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `bytes=a-b`
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Which response a conditional or range request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// 200: the whole content.
    Full,
    /// 304: the client's copy is current; no body.
    NotModified,
    /// 206: bytes `start..end` (end exclusive) of the content.
    Partial {
        /// First byte sent.
        start: u64,
        /// One past the last byte sent.
        end: u64,
    },
    /// 416: the range lies beyond the content.
    Unsatisfiable,
}

impl Conditions {
    /// Reads the conditional and range headers of a GET or HEAD request
    /// from all of its header lines. Headers that cannot be parsed are
    /// ignored, as the RFC allows.
    pub fn parse(is_get: bool, headers: &[httparse::Header<'_>]) -> Conditions {
        let values = |name: &'static str| {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).map(str::trim).unwrap_or(""))
        };
        // A field that takes one value, sent on one line only.
        let single = |name| {
            let mut lines = values(name);
            lines.next().filter(|_| lines.next().is_none())
        };
        let mut range = values("range");
        let if_none_match = {
            let mut lines = values("if-none-match").peekable();
            lines.peek().is_some().then(|| parse_tag_list(lines))
        };
        Conditions {
            if_none_match,
            if_modified_since: single("if-modified-since").and_then(parse_date),
            range: range.next().filter(|_| range.next().is_none()).and_then(parse_range),
            if_range: single("if-range").map(parse_validator),
            is_get,
        }
    }

    /// Weighs the conditions against content of `len` bytes last modified
    /// at `modified` (`None` for computed content, which has no validators
    /// and is always sent whole).
    pub fn select(&self, len: u64, modified: Option<SystemTime>) -> Selection {
        let Some(modified) = modified else { return Selection::Full };
        let mtime = unix_seconds(modified);
        let ours = EntityTag { mtime, size: len, weak: false };
        // A date condition is weighed only against a time Last-Modified
        // shows as it is (the module docs); the clock is read only then.
        let shown_mtime = || (last_modified(modified, SystemTime::now()) == Some(modified)).then_some(mtime);
        // If-None-Match, when present, overrides If-Modified-Since.
        match &self.if_none_match {
            Some(TagList::Any) => return Selection::NotModified,
            Some(TagList::Tags(tags)) => {
                // Weak comparison (section 8.8.3.2): the weak flag is ignored.
                if tags.iter().any(|tag| tag.mtime == ours.mtime && tag.size == ours.size) {
                    return Selection::NotModified;
                }
            }
            None => {
                if self.if_modified_since.is_some_and(|since| shown_mtime().is_some_and(|mtime| mtime <= since)) {
                    return Selection::NotModified;
                }
            }
        }
        let Some(range) = self.range.filter(|_| self.is_get) else { return Selection::Full };
        let range_still_valid = match self.if_range {
            None => true,
            Some(Validator::Date(date)) => shown_mtime() == Some(date),
            Some(Validator::Tag(tag)) => !tag.weak && tag == ours,
            Some(Validator::Never) => false,
        };
        if !range_still_valid {
            return Selection::Full;
        }
        let (start, end) = match range {
            RangeSpec::FromTo(first, last) => (first, last.saturating_add(1).min(len)),
            RangeSpec::From(first) => (first, len),
            RangeSpec::Suffix(count) => (len.saturating_sub(count), len),
        };
        let empty_suffix = matches!(range, RangeSpec::Suffix(0));
        if start >= len || empty_suffix {
            Selection::Unsatisfiable
        } else {
            Selection::Partial { start, end }
        }
    }
}

/// The date `Last-Modified` shows for content modified at `modified`, in
/// a response sent at `now` (the module docs): the time itself, `now` for
/// a time in the future, nothing for a time before 1970.
pub fn last_modified(modified: SystemTime, now: SystemTime) -> Option<SystemTime> {
    if modified < UNIX_EPOCH {
        None
    } else {
        Some(modified.min(now))
    }
}

/// Appends the entity tag of content of `len` bytes modified at
/// `modified`, quoted, to `out` (no allocation: this runs per response).
pub fn append_entity_tag(len: u64, modified: SystemTime, out: &mut Vec<u8>) {
    use std::io::Write;
    let mtime = unix_seconds(modified);
    let sign = if mtime < 0 { "-" } else { "" };
    let _ = write!(out, "\"{sign}{:x}-{:x}\"", mtime.unsigned_abs(), len);
}

/// The entity tag as a string, for tests.
#[cfg(test)]
fn entity_tag(len: u64, modified: SystemTime) -> String {
    let mut out = Vec::new();
    append_entity_tag(len, modified, &mut out);
    String::from_utf8(out).unwrap()
}

/// Whole seconds since 1970, rounded down (as `stat`'s `st_mtime`):
/// negative before 1970, saturating at the ends of `i64`.
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let seconds = before.as_secs().saturating_add(u64::from(before.subsec_nanos() > 0));
            0i64.saturating_sub_unsigned(seconds)
        }
    }
}

fn parse_date(text: &str) -> Option<i64> {
    httpdate::parse_http_date(text).ok().map(unix_seconds)
}

fn parse_tag(text: &str) -> Option<EntityTag> {
    let (weak, quoted) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let (negative, inner) = match inner.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    let (mtime, size) = inner.split_once('-')?;
    let hex = |digits: &str| {
        // from_str_radix would also take a sign: ours are bare digits.
        digits.bytes().all(|b| b.is_ascii_hexdigit()).then(|| u64::from_str_radix(digits, 16).ok()).flatten()
    };
    let magnitude = hex(mtime)?;
    let mtime = if negative { 0i64.checked_sub_unsigned(magnitude)? } else { i64::try_from(magnitude).ok()? };
    Some(EntityTag { mtime, size: hex(size)?, weak })
}

/// The members of every `If-None-Match` line. Members not in our format
/// cannot match and are not kept. (A comma inside a quoted tag splits it,
/// but no piece of it can then look like one of ours.)
fn parse_tag_list<'a>(lines: impl Iterator<Item = &'a str>) -> TagList {
    let mut tags = Vec::new();
    for member in lines.flat_map(|line| line.split(',')).map(str::trim) {
        if member == "*" {
            return TagList::Any;
        }
        tags.extend(parse_tag(member));
    }
    TagList::Tags(tags)
}

fn parse_validator(text: &str) -> Validator {
    if text.starts_with('"') || text.starts_with("W/") {
        parse_tag(text).map_or(Validator::Never, Validator::Tag)
    } else {
        parse_date(text).map_or(Validator::Never, Validator::Date)
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`. Several ranges, other units and
/// malformed specs give `None`: the whole content is sent (200), which
/// RFC 9110 allows a server to do for any range request.
fn parse_range(text: &str) -> Option<RangeSpec> {
    let spec = text.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    // Digits only (`parse` would take a `+`); too many for a u64 is no
    // range at all, so the whole content is sent.
    let number = |digits: &str| {
        let digits = digits.trim();
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse::<u64>().ok()).flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(number(last)?)),
        (false, true) => Some(RangeSpec::From(number(first)?)),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last).then_some(RangeSpec::FromTo(first, last))
        }
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn conditions(headers: &[(&str, &str)]) -> Conditions {
        parse(true, headers)
    }

    fn parse(is_get: bool, headers: &[(&str, &str)]) -> Conditions {
        let lines: Vec<httparse::Header<'_>> =
            headers.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
        Conditions::parse(is_get, &lines)
    }

    const LEN: u64 = 1000;

    fn modified() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn select(headers: &[(&str, &str)]) -> Selection {
        conditions(headers).select(LEN, Some(modified()))
    }

    #[test]
    fn ranges_select_the_bytes_nginx_would() {
        let partial = |start, end| Selection::Partial { start, end };
        assert_eq!(select(&[]), Selection::Full);
        assert_eq!(select(&[("Range", "bytes=0-99")]), partial(0, 100));
        assert_eq!(select(&[("Range", "bytes=990-5000")]), partial(990, 1000), "the end is clamped");
        assert_eq!(select(&[("Range", "bytes=500-")]), partial(500, 1000));
        assert_eq!(select(&[("Range", "bytes=-100")]), partial(900, 1000));
        assert_eq!(select(&[("Range", "bytes=-5000")]), partial(0, 1000), "a suffix longer than the file");
        assert_eq!(select(&[("Range", "bytes=1000-")]), Selection::Unsatisfiable);
        assert_eq!(select(&[("Range", "bytes=-0")]), Selection::Unsatisfiable);
        for whole in ["bytes=0-1,5-6", "lines=1-2", "bytes=5-1", "bytes=-", "bytes=x-"] {
            assert_eq!(select(&[("Range", whole)]), Selection::Full, "{whole}");
        }
        let head = parse(false, &[("Range", "bytes=0-1")]);
        assert_eq!(head.select(LEN, Some(modified())), Selection::Full, "HEAD ignores Range");
    }

    #[test]
    fn validators_give_304_for_a_current_copy() {
        let tag = entity_tag(LEN, modified());
        assert_eq!(tag, "\"6553f100-3e8\"");
        let date = httpdate::fmt_http_date(modified());
        let older = httpdate::fmt_http_date(modified() - Duration::from_secs(1));
        assert_eq!(select(&[("If-None-Match", &tag)]), Selection::NotModified);
        assert_eq!(select(&[("If-None-Match", &format!("\"x\", W/{tag}"))]), Selection::NotModified, "weak match");
        assert_eq!(select(&[("If-None-Match", "*")]), Selection::NotModified);
        assert_eq!(select(&[("If-None-Match", "\"6553f100-3e9\"")]), Selection::Full, "another size");
        assert_eq!(select(&[("If-Modified-Since", &date)]), Selection::NotModified);
        assert_eq!(select(&[("If-Modified-Since", &older)]), Selection::Full);
        assert_eq!(
            select(&[("If-None-Match", "\"other\""), ("If-Modified-Since", &date)]),
            Selection::Full,
            "If-None-Match overrides If-Modified-Since"
        );
        assert_eq!(conditions(&[("If-None-Match", "*")]).select(LEN, None), Selection::Full, "computed content");
    }

    /// RFC 9110 section 13.1.2: any member of the list matches, wherever
    /// it stands and however the list is split over lines.
    #[test]
    fn every_member_of_a_tag_list_is_compared() {
        let tag = entity_tag(LEN, modified());
        let others: Vec<String> = (1..=9).map(|n| format!("\"{n:x}-{n:x}\"")).collect();
        for before in 0..=others.len() {
            let list = [&others[..before], std::slice::from_ref(&tag)].concat().join(", ");
            assert_eq!(select(&[("If-None-Match", &list)]), Selection::NotModified, "{list}");
        }
        let five = format!("{}, {tag}", others[..4].join(","));
        assert_eq!(select(&[("If-None-Match", &five)]), Selection::NotModified, "the fifth of five");
        assert_eq!(select(&[("If-None-Match", &others.join(", "))]), Selection::Full, "no member matches");
        assert_eq!(
            select(&[("If-None-Match", &others[0]), ("If-None-Match", &format!("{}, {tag}", others[1]))]),
            Selection::NotModified,
            "a list over two lines"
        );
        assert_eq!(select(&[("If-None-Match", &others[0]), ("If-None-Match", "*")]), Selection::NotModified);
        assert_eq!(select(&[("Range", "bytes=0-1"), ("Range", "bytes=5-6")]), Selection::Full, "two ranges");
        let date = httpdate::fmt_http_date(modified());
        assert_eq!(
            select(&[("If-Modified-Since", &date), ("If-Modified-Since", &date)]),
            Selection::Full,
            "a single-valued header sent twice is invalid, so ignored"
        );
    }

    /// Before 1970 and in the future: the entity tag is nginx's, and no
    /// date condition is weighed against a time Last-Modified does not show.
    #[test]
    fn times_no_date_shows_have_tags_but_no_date_conditions() {
        let old = UNIX_EPOCH - Duration::from_secs(189_388_800); // 1964-01-01
        assert_eq!(entity_tag(2, old), "\"-b49d800-2\"", "as nginx writes it");
        assert_eq!(entity_tag(2, UNIX_EPOCH - Duration::from_millis(500)), "\"-1-2\"", "rounded down, as st_mtime");
        let now = SystemTime::now();
        assert_eq!(last_modified(old, now), None);
        let future = now + Duration::from_secs(3600);
        assert_eq!(last_modified(future, now), Some(now), "RFC 9110 section 8.8.2.1");
        assert_eq!(last_modified(modified(), now), Some(modified()));
        let epoch = httpdate::fmt_http_date(UNIX_EPOCH);
        let far = "Fri, 31 Dec 9999 23:59:59 GMT";
        for (time, since) in [(old, epoch.as_str()), (future, far)] {
            let ims = conditions(&[("If-Modified-Since", since)]);
            assert_eq!(ims.select(LEN, Some(time)), Selection::Full, "{time:?}");
            let tag = entity_tag(LEN, time);
            assert_eq!(conditions(&[("If-None-Match", &tag)]).select(LEN, Some(time)), Selection::NotModified);
            let if_range = conditions(&[("Range", "bytes=0-0"), ("If-Range", since)]);
            assert_eq!(if_range.select(LEN, Some(time)), Selection::Full);
        }
        for extreme in [i64::MIN, -1, i64::MAX] {
            let tag = EntityTag { mtime: extreme, size: u64::MAX, weak: false };
            let text = if extreme < 0 {
                format!("\"-{:x}-{:x}\"", extreme.unsigned_abs(), u64::MAX)
            } else {
                format!("\"{extreme:x}-{:x}\"", u64::MAX)
            };
            assert_eq!(parse_tag(&text), Some(tag), "{text}");
        }
        for never in ["\"+5-1\"", "\"--5-1\"", "\"8000000000000000-1\"", "\"-8000000000000001-1\""] {
            assert_eq!(parse_tag(never), None, "{never}");
        }
        assert_eq!(select(&[("Range", "bytes=+5-")]), Selection::Full, "digits only");
        assert_eq!(select(&[("Range", "bytes=0-99999999999999999999")]), Selection::Full, "past u64: no range");
    }

    #[test]
    fn if_range_keeps_a_range_only_for_the_same_content() {
        let tag = entity_tag(LEN, modified());
        let date = httpdate::fmt_http_date(modified());
        let partial = Selection::Partial { start: 0, end: 10 };
        assert_eq!(select(&[("Range", "bytes=0-9"), ("If-Range", &tag)]), partial);
        assert_eq!(select(&[("Range", "bytes=0-9"), ("If-Range", &date)]), partial);
        assert_eq!(select(&[("Range", "bytes=0-9"), ("If-Range", "\"6553f100-1\"")]), Selection::Full);
        assert_eq!(select(&[("Range", "bytes=0-9"), ("If-Range", &format!("W/{tag}"))]), Selection::Full, "weak");
        assert_eq!(select(&[("Range", "bytes=0-9"), ("If-Range", "yesterday")]), Selection::Full);
    }
}
