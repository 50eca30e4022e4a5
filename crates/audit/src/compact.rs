//! The compact stored form of an audit record: how a store keeps a record in
//! about a fifth of the bytes of its canonical JSON, without changing the leaf.
//!
//! The leaf of the Merkle log stays [`AuditRecord::canonical_bytes`]. The
//! compact form is a lossless encoding of the record, so a reader decodes it
//! and re-encodes the canonical JSON to hash it: a changed byte changes the
//! record (and so its leaf hash) or makes it undecodable, which a verifier
//! reports as a changed record. Three fields are not in it because the store
//! keeps them as columns: `seq` (the row's key), `time_ms` and `request_id`.
//!
//! Layout (see `docs/audit-format.md`):
//! - byte 0: [`FORMAT`] (canonical JSON starts with `{`, so the first byte
//!   tells the forms apart);
//! - byte 1: flags: bit 0 kind is `admin`, bit 1 outcome is `allow`, bit 2
//!   `fail_open`, bit 3 kind is `process`, bit 4 kind is `egress`; the other
//!   bits are zero (at most one kind bit);
//! - bytes 2–3: `status`, little-endian;
//! - then the other fields in declaration order, each a *value* or an
//!   unsigned LEB128 integer (`duration_us`, `bytes_in`, `bytes_out`; lists
//!   and optional integers are a count or `0`/`1 + n`; the `process` event
//!   is `0`, or `1` and its fields, signed integers zigzag-encoded, `2`
//!   and its fields followed by `address` and `method`, `3` and its
//!   fields followed by `address`, `method` and `user`, or `4` and the
//!   fields of `3` followed by `violations` and the `violation` object,
//!   `0` or `1` and its `mechanism`, `denied`, `path`, `address`,
//!   `syscall` and `pid`).
//!
//! A value is an LEB128 tag: `0` null, `1` text (length and UTF-8 bytes),
//! `2` lowercase hex (byte length and the bytes: digests and fingerprints),
//! `3 + i` the string numbered `i` in the store's string table (names of
//! agents, routes, policies, error codes, addresses: the few strings that
//! recur). The encoder chooses; the decoder accepts any, and rejects trailing
//! bytes, unknown flags and unknown tags.

use crate::{AuditRecord, ContentFinding, Outcome, ProcessEvent, RecordKind, Violation};

/// The first byte of a record in the compact form.
pub const FORMAT: u8 = 0x01;

const KIND_ADMIN: u8 = 1;
const OUTCOME_ALLOW: u8 = 2;
const FAIL_OPEN: u8 = 4;
const KIND_PROCESS: u8 = 8;
const KIND_EGRESS: u8 = 16;

const NULL: u64 = 0;
const TEXT: u64 = 1;
const HEX: u64 = 2;
const INTERNED: u64 = 3;

/// Why stored bytes are not a record in the compact form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end, go on, or hold something no encoder writes.
    #[error("the stored record is malformed at byte {0}")]
    Malformed(usize),
    /// A value names a string the string table does not hold.
    #[error("the stored record names string {0}, which is not in the string table")]
    UnknownString(u64),
}

/// Where a string of a record goes: interned (it recurs: names, codes,
/// addresses), as text (paths, tickets, pointers), or as hex when it is
/// lowercase hex (digests).
#[derive(Clone, Copy)]
enum Slot {
    Interned,
    Text,
    Digest,
}

/// Encodes `record` (all but `seq`, `time_ms` and `request_id`). `intern`
/// gives the number of a string in the string table, adding it if needed.
pub fn encode(record: &AuditRecord, intern: &mut impl FnMut(&str) -> u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(FORMAT);
    let mut flags = 0;
    match record.kind {
        RecordKind::Request => {}
        RecordKind::Admin => flags |= KIND_ADMIN,
        RecordKind::Process => flags |= KIND_PROCESS,
        RecordKind::Egress => flags |= KIND_EGRESS,
    }
    if record.outcome == Outcome::Allow {
        flags |= OUTCOME_ALLOW;
    }
    if record.fail_open {
        flags |= FAIL_OPEN;
    }
    out.push(flags);
    out.extend_from_slice(&record.status.to_le_bytes());
    let mut w = Writer { out, intern };
    w.value(record.principal.as_deref(), Slot::Interned);
    w.value(record.credential.as_deref(), Slot::Interned);
    w.value(record.source_ip.as_deref(), Slot::Interned);
    w.value(Some(record.action.as_str()), Slot::Interned);
    w.value(record.resource.as_deref(), Slot::Interned);
    w.value(record.path.as_deref(), Slot::Text);
    w.int(record.policies.len() as u64);
    for policy in &record.policies {
        w.value(Some(policy.as_str()), Slot::Interned);
    }
    w.value(record.error_code.as_deref(), Slot::Interned);
    w.int(record.duration_us);
    w.int(record.bytes_in);
    w.int(record.bytes_out);
    w.value(record.classification.as_deref(), Slot::Interned);
    w.value(record.request_sha256.as_deref(), Slot::Digest);
    w.value(record.response_sha256.as_deref(), Slot::Digest);
    w.value(record.response_sha256_unredacted.as_deref(), Slot::Digest);
    w.int(record.content.len() as u64);
    for finding in &record.content {
        w.value(Some(finding.direction.as_str()), Slot::Interned);
        w.value(Some(finding.kind.as_str()), Slot::Interned);
        w.value(finding.pointer.as_deref(), Slot::Text);
        w.int(finding.start);
        w.int(finding.end);
        w.value(finding.fingerprint.as_deref(), Slot::Digest);
    }
    w.opt_int(record.policy_version);
    w.value(record.approval_ticket.as_deref(), Slot::Text);
    w.value(record.breakglass.as_deref(), Slot::Text);
    w.opt_int(record.sampled);
    match &record.process {
        None => w.int(0),
        Some(p) => {
            let tag = if p.violation.is_some() || p.violations.is_some() {
                4
            } else if p.user.is_some() {
                3
            } else if p.address.is_some() || p.method.is_some() {
                2
            } else {
                1
            };
            w.int(tag);
            w.value(Some(p.command.as_str()), Slot::Interned);
            w.value(p.profile_sha256.as_deref(), Slot::Digest);
            w.value(Some(p.session.as_str()), Slot::Digest);
            w.opt_int(p.pid.map(u64::from));
            w.value(p.cause.as_deref(), Slot::Interned);
            w.opt_int(p.exit_code.map(zigzag));
            w.opt_int(p.signal.map(zigzag));
            w.opt_int(p.ran_ms);
            if tag >= 2 {
                w.value(p.address.as_deref(), Slot::Interned);
                w.value(p.method.as_deref(), Slot::Interned);
            }
            if tag >= 3 {
                w.value(p.user.as_deref(), Slot::Interned);
            }
            if tag == 4 {
                w.opt_int(p.violations);
                match &p.violation {
                    None => w.int(0),
                    Some(v) => {
                        w.int(1);
                        w.value(Some(v.mechanism.as_str()), Slot::Interned);
                        w.value(Some(v.denied.as_str()), Slot::Interned);
                        w.value(v.path.as_deref(), Slot::Text);
                        w.value(v.address.as_deref(), Slot::Interned);
                        w.opt_int(v.syscall.map(u64::from));
                        w.opt_int(v.pid.map(u64::from));
                    }
                }
            }
        }
    }
    w.out
}

/// A signed integer as an unsigned one, small magnitudes staying small.
fn zigzag(n: i32) -> u64 {
    u64::from(((n << 1) ^ (n >> 31)) as u32)
}

/// The inverse of [`zigzag`]; `None` for a value no `i32` encodes to.
fn unzigzag(n: u64) -> Option<i32> {
    let n = u32::try_from(n).ok()?;
    Some(((n >> 1) as i32) ^ -((n & 1) as i32))
}

/// Decodes a record in the compact form, given the fields kept beside it and
/// `lookup`, which reads the string table.
pub fn decode<'s>(
    bytes: &[u8],
    seq: u64,
    time_ms: i64,
    request_id: String,
    lookup: impl Fn(u64) -> Option<&'s str>,
) -> Result<AuditRecord, DecodeError> {
    let mut record = AuditRecord {
        seq: Some(seq),
        time_ms,
        request_id,
        ..AuditRecord::default()
    };
    decode_into(bytes, lookup, &mut record)?;
    Ok(record)
}

/// [`decode`] into `record`, reusing the allocations of its strings and
/// lists: a writer that checks each record it encodes by decoding it back
/// keeps one record for the purpose, and once that record has held a
/// record of the same shape the check allocates nothing. Every field the
/// compact form holds is overwritten; `seq`, `time_ms`, `request_id` (kept
/// beside the form) and any field it does not hold are left as they are.
/// On an error `record` holds a mixture of the two and means nothing.
pub fn decode_into<'s>(
    bytes: &[u8],
    lookup: impl Fn(u64) -> Option<&'s str>,
    record: &mut AuditRecord,
) -> Result<(), DecodeError> {
    if bytes.len() < 4
        || bytes[0] != FORMAT
        || bytes[1] & !(KIND_ADMIN | OUTCOME_ALLOW | FAIL_OPEN | KIND_PROCESS | KIND_EGRESS) != 0
        || (bytes[1] & (KIND_ADMIN | KIND_PROCESS | KIND_EGRESS)).count_ones() > 1
    {
        return Err(DecodeError::Malformed(0));
    }
    let flags = bytes[1];
    let mut r = Reader {
        bytes,
        at: 4,
        lookup,
    };
    record.kind = if flags & KIND_ADMIN != 0 {
        RecordKind::Admin
    } else if flags & KIND_PROCESS != 0 {
        RecordKind::Process
    } else if flags & KIND_EGRESS != 0 {
        RecordKind::Egress
    } else {
        RecordKind::Request
    };
    record.outcome = if flags & OUTCOME_ALLOW != 0 {
        Outcome::Allow
    } else {
        Outcome::Deny
    };
    record.status = u16::from_le_bytes([bytes[2], bytes[3]]);
    record.fail_open = flags & FAIL_OPEN != 0;
    r.value_into(&mut record.principal)?;
    r.value_into(&mut record.credential)?;
    r.value_into(&mut record.source_ip)?;
    r.required_into(&mut record.action)?;
    r.value_into(&mut record.resource)?;
    r.value_into(&mut record.path)?;
    let policies = r.count()?;
    record.policies.truncate(policies);
    for i in 0..policies {
        if i == record.policies.len() {
            record.policies.push(String::new());
        }
        r.required_into(&mut record.policies[i])?;
    }
    r.value_into(&mut record.error_code)?;
    record.duration_us = r.int()?;
    record.bytes_in = r.int()?;
    record.bytes_out = r.int()?;
    r.value_into(&mut record.classification)?;
    r.value_into(&mut record.request_sha256)?;
    r.value_into(&mut record.response_sha256)?;
    r.value_into(&mut record.response_sha256_unredacted)?;
    let findings = r.count()?;
    record.content.truncate(findings);
    for i in 0..findings {
        if i == record.content.len() {
            record.content.push(ContentFinding::default());
        }
        let finding = &mut record.content[i];
        r.required_into(&mut finding.direction)?;
        r.required_into(&mut finding.kind)?;
        r.value_into(&mut finding.pointer)?;
        finding.start = r.int()?;
        finding.end = r.int()?;
        r.value_into(&mut finding.fingerprint)?;
    }
    record.policy_version = r.opt_int()?;
    r.value_into(&mut record.approval_ticket)?;
    r.value_into(&mut record.breakglass)?;
    record.sampled = r.opt_int()?;
    let start = r.at;
    record.process = match r.int()? {
        0 => None,
        tag @ (1..=4) => {
            let signed = |r: &mut Reader<'_, _>| {
                let start = r.at;
                match r.opt_int()? {
                    None => Ok(None),
                    Some(n) => unzigzag(n).map(Some).ok_or(DecodeError::Malformed(start)),
                }
            };
            let pid_at = r.at;
            let mut event = ProcessEvent {
                command: r.required()?,
                profile_sha256: r.value()?,
                session: r.required()?,
                pid: r
                    .opt_int()?
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| DecodeError::Malformed(pid_at))?,
                cause: r.value()?,
                exit_code: signed(&mut r)?,
                signal: signed(&mut r)?,
                ran_ms: r.opt_int()?,
                ..ProcessEvent::default()
            };
            if tag >= 2 {
                event.address = r.value()?;
                event.method = r.value()?;
                // Tag 2 says at least one is there: one encoding per record.
                if tag == 2 && event.address.is_none() && event.method.is_none() {
                    return Err(DecodeError::Malformed(start));
                }
            }
            if tag >= 3 {
                event.user = r.value()?;
                // Tag 3 says the user is there.
                if tag == 3 && event.user.is_none() {
                    return Err(DecodeError::Malformed(start));
                }
            }
            if tag == 4 {
                event.violations = r.opt_int()?;
                let u32_at = |r: &mut Reader<'_, _>| {
                    let at = r.at;
                    r.opt_int()?
                        .map(u32::try_from)
                        .transpose()
                        .map_err(|_| DecodeError::Malformed(at))
                };
                event.violation = match r.int()? {
                    0 => None,
                    1 => Some(Violation {
                        mechanism: r.required()?,
                        denied: r.required()?,
                        path: r.value()?,
                        address: r.value()?,
                        syscall: u32_at(&mut r)?,
                        pid: u32_at(&mut r)?,
                    }),
                    _ => return Err(DecodeError::Malformed(start)),
                };
                // Tag 4 says a violation or a count is there.
                if event.violation.is_none() && event.violations.is_none() {
                    return Err(DecodeError::Malformed(start));
                }
            }
            Some(event)
        }
        _ => return Err(DecodeError::Malformed(start)),
    };
    if r.at != bytes.len() {
        return Err(DecodeError::Malformed(r.at));
    }
    Ok(())
}

struct Writer<'i, F> {
    out: Vec<u8>,
    intern: &'i mut F,
}

impl<F: FnMut(&str) -> u64> Writer<'_, F> {
    fn int(&mut self, mut n: u64) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    fn opt_int(&mut self, n: Option<u64>) {
        match n {
            None => self.int(0),
            Some(n) => {
                // Written as two integers so every u64 fits.
                self.int(1);
                self.int(n);
            }
        }
    }

    fn value(&mut self, value: Option<&str>, slot: Slot) {
        let Some(text) = value else {
            self.int(NULL);
            return;
        };
        match slot {
            Slot::Interned => {
                let id = (self.intern)(text);
                self.int(INTERNED + id);
            }
            Slot::Digest if is_lower_hex(text) => {
                self.int(HEX);
                self.int(text.len() as u64 / 2);
                self.out.extend(
                    text.as_bytes()
                        .chunks(2)
                        .map(|pair| (hex_digit(pair[0]) << 4) | hex_digit(pair[1])),
                );
            }
            Slot::Text | Slot::Digest => {
                self.int(TEXT);
                self.int(text.len() as u64);
                self.out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

struct Reader<'b, L> {
    bytes: &'b [u8],
    at: usize,
    lookup: L,
}

impl<'s, L: Fn(u64) -> Option<&'s str>> Reader<'_, L> {
    fn int(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let &byte = self
                .bytes
                .get(self.at)
                .ok_or(DecodeError::Malformed(start))?;
            self.at += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Malformed(start));
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::Malformed(start))
    }

    fn opt_int(&mut self) -> Result<Option<u64>, DecodeError> {
        let start = self.at;
        match self.int()? {
            0 => Ok(None),
            1 => Ok(Some(self.int()?)),
            _ => Err(DecodeError::Malformed(start)),
        }
    }

    /// A length or count: no larger than the bytes left (each item takes at
    /// least one), so a forged count cannot make the decoder allocate much.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let start = self.at;
        let n = self.int()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(DecodeError::Malformed(start));
        }
        Ok(n as usize)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let start = self.at;
        let end = start.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Malformed(start))?;
        self.at = end;
        Ok(&self.bytes[start..end])
    }

    fn value(&mut self) -> Result<Option<String>, DecodeError> {
        let mut value = None;
        self.value_into(&mut value)?;
        Ok(value)
    }

    fn required(&mut self) -> Result<String, DecodeError> {
        let mut text = String::new();
        self.required_into(&mut text)?;
        Ok(text)
    }

    /// A value into `slot`, reusing the string it holds.
    fn value_into(&mut self, slot: &mut Option<String>) -> Result<(), DecodeError> {
        let start = self.at;
        match self.int()? {
            NULL => {
                *slot = None;
                Ok(())
            }
            tag => self.text_into(start, tag, slot.get_or_insert_with(String::new)),
        }
    }

    /// A value that must not be null into `text`, reusing its allocation.
    fn required_into(&mut self, text: &mut String) -> Result<(), DecodeError> {
        let start = self.at;
        match self.int()? {
            NULL => Err(DecodeError::Malformed(start)),
            tag => self.text_into(start, tag, text),
        }
    }

    /// The text of a value tagged `tag` (read at `start`), replacing `out`'s.
    fn text_into(&mut self, start: usize, tag: u64, out: &mut String) -> Result<(), DecodeError> {
        out.clear();
        match tag {
            TEXT => {
                let len = self.count()?;
                let text = std::str::from_utf8(self.take(len)?)
                    .map_err(|_| DecodeError::Malformed(start))?;
                out.push_str(text);
            }
            HEX => {
                let len = self.count()?;
                let bytes = self.take(len)?;
                if bytes.is_empty() {
                    return Err(DecodeError::Malformed(start));
                }
                out.reserve(len * 2);
                for byte in bytes {
                    out.push(HEX_DIGITS[usize::from(byte >> 4)] as char);
                    out.push(HEX_DIGITS[usize::from(byte & 0xf)] as char);
                }
            }
            tag => {
                let id = tag - INTERNED;
                let text = (self.lookup)(id).ok_or(DecodeError::UnknownString(id))?;
                out.push_str(text);
            }
        }
        Ok(())
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn is_lower_hex(text: &str) -> bool {
    !text.is_empty()
        && text.len().is_multiple_of(2)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_digit(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        _ => byte - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A string table in memory, as a store keeps it.
    #[derive(Default)]
    struct Table {
        ids: HashMap<String, u64>,
        strings: Vec<String>,
    }

    impl Table {
        fn encode(&mut self, record: &AuditRecord) -> Vec<u8> {
            encode(record, &mut |s: &str| {
                if let Some(&id) = self.ids.get(s) {
                    return id;
                }
                self.strings.push(s.to_owned());
                self.ids.insert(s.to_owned(), self.strings.len() as u64 - 1);
                self.strings.len() as u64 - 1
            })
        }

        fn decode(&self, bytes: &[u8], like: &AuditRecord) -> Result<AuditRecord, DecodeError> {
            decode(
                bytes,
                like.seq.unwrap_or_default(),
                like.time_ms,
                like.request_id.clone(),
                |id| self.strings.get(id as usize).map(String::as_str),
            )
        }
    }

    fn full() -> AuditRecord {
        AuditRecord {
            seq: Some(7),
            time_ms: 1_700_000_000_123,
            kind: RecordKind::Admin,
            request_id: "0123456789abcdef0123456789abcdef".into(),
            principal: Some("bot".into()),
            credential: Some("spiffe://portcullis.local/agent/bot serial=01".into()),
            source_ip: Some("127.0.0.1".into()),
            action: "GET".into(),
            resource: Some("demo".into()),
            path: Some("/demo/hello — ünïcode".into()),
            outcome: Outcome::Allow,
            policies: vec!["a".into(), "b".into(), "a".into()],
            error_code: Some("stream_revoked".into()),
            status: 65_535,
            duration_us: u64::MAX,
            bytes_in: 0,
            bytes_out: 1 << 40,
            classification: Some("public".into()),
            request_sha256: Some("e3b0c44298fc1c149afbf4c8996fb924".into()),
            // Not lowercase hex: kept as text.
            response_sha256: Some("E3B0C4".into()),
            response_sha256_unredacted: Some("abc".into()),
            fail_open: true,
            content: vec![ContentFinding {
                direction: "request".into(),
                kind: "aws_access_key".into(),
                pointer: Some("/note".into()),
                start: 10,
                end: 30,
                fingerprint: Some("3f2a9c1d4b5e6f70".into()),
            }],
            policy_version: Some(u64::MAX),
            approval_ticket: Some(String::new()),
            breakglass: Some("breakglass:1".into()),
            sampled: Some(0),
            process: Some(ProcessEvent {
                command: "node /srv/server.js".into(),
                profile_sha256: Some("ab".repeat(32)),
                session: "0123456789abcdef".into(),
                pid: Some(u32::MAX),
                cause: Some("seccomp_violation".into()),
                exit_code: Some(-1),
                signal: Some(i32::MIN),
                ran_ms: Some(12),
                ..ProcessEvent::default()
            }),
        }
    }

    /// An egress record: the extended process event (tag 2).
    fn egress() -> AuditRecord {
        let mut r = full();
        r.kind = RecordKind::Egress;
        if let Some(p) = r.process.as_mut() {
            p.address = Some("93.184.215.14".into());
            p.method = Some("CONNECT".into());
        }
        r
    }

    /// The records a round trip must reproduce exactly, canonical bytes
    /// included: every field set, every optional field empty, and each
    /// field set alone.
    fn cases() -> Vec<AuditRecord> {
        let mut only_method = egress();
        if let Some(p) = only_method.process.as_mut() {
            p.address = None;
        }
        // Tag 3: the delegating user, with and without address and method.
        let mut delegated = egress();
        let mut delegated_bare = full();
        for r in [&mut delegated, &mut delegated_bare] {
            if let Some(p) = r.process.as_mut() {
                p.user = Some("alice@example.com".into());
            }
        }
        // Tag 4: a kernel-reported violation, and an exit's count alone.
        let mut violation = delegated_bare.clone();
        let mut count_only = full();
        if let Some(p) = violation.process.as_mut() {
            p.violations = Some(3);
            p.violation = Some(Violation {
                mechanism: "landlock".into(),
                denied: "fs.read_file".into(),
                path: Some("/root/.ssh/id_ed25519".into()),
                address: None,
                syscall: Some(257),
                pid: Some(4242),
            });
        }
        if let Some(p) = count_only.process.as_mut() {
            p.violations = Some(0);
        }
        let mut cases = vec![
            violation,
            count_only,
            full(),
            AuditRecord::default(),
            egress(),
            only_method,
            delegated,
            delegated_bare,
        ];
        let empty = AuditRecord::default();
        let full = full();
        let json = |r: &AuditRecord| serde_json::to_value(r).unwrap();
        let full_json = json(&full);
        for (name, value) in full_json.as_object().unwrap() {
            let mut one = json(&empty);
            one[name] = value.clone();
            cases.push(serde_json::from_value(one).unwrap());
        }
        cases
    }

    #[test]
    fn every_record_round_trips_to_its_canonical_bytes() {
        let mut table = Table::default();
        for record in cases() {
            let mut record = record;
            record.seq = Some(record.seq.unwrap_or_default());
            let bytes = table.encode(&record);
            let back = table.decode(&bytes, &record).unwrap();
            assert_eq!(back, record);
            assert_eq!(back.canonical_bytes(), record.canonical_bytes());
        }
    }

    /// One record decoded into over and over, whatever it held before,
    /// comes out as a fresh decode would: nothing of an earlier record stays.
    #[test]
    fn decoding_into_a_used_record_leaves_nothing_of_the_old_one() {
        let mut table = Table::default();
        let mut cases = cases();
        cases.extend(cases.clone().into_iter().rev());
        let mut reused = full();
        for mut record in cases {
            record.seq = Some(record.seq.unwrap_or_default());
            let bytes = table.encode(&record);
            reused.seq = record.seq;
            reused.time_ms = record.time_ms;
            reused.request_id.clone_from(&record.request_id);
            decode_into(
                &bytes,
                |id| table.strings.get(id as usize).map(String::as_str),
                &mut reused,
            )
            .unwrap();
            assert_eq!(reused, record);
            assert_eq!(reused, table.decode(&bytes, &record).unwrap());
        }
    }

    #[test]
    fn signed_integers_round_trip_through_zigzag() {
        for n in [0, 1, -1, 2, -2, 255, i32::MAX, i32::MIN] {
            assert_eq!(unzigzag(zigzag(n)), Some(n));
        }
        assert_eq!(unzigzag(u64::from(u32::MAX) + 1), None);
    }

    #[test]
    fn a_typical_record_is_small() {
        let mut table = Table::default();
        let record = AuditRecord {
            kind: RecordKind::Request,
            path: Some("/demo/items/12345".into()),
            policies: vec!["readers-read-low".into()],
            error_code: None,
            status: 200,
            duration_us: 1_834,
            bytes_out: 5_000,
            request_sha256: Some("ab".repeat(32)),
            response_sha256: Some("cd".repeat(32)),
            response_sha256_unredacted: None,
            fail_open: false,
            content: Vec::new(),
            policy_version: Some(3),
            approval_ticket: None,
            breakglass: None,
            sampled: None,
            process: None,
            ..full()
        };
        table.encode(&record);
        let bytes = table.encode(&record);
        // 4 header bytes, 64 digest bytes, the path and one byte or so a field.
        assert!(bytes.len() < 120, "{}", bytes.len());
        assert!(record.canonical_bytes().len() > 500);
    }

    #[test]
    fn changed_or_cut_bytes_change_the_record_or_fail_to_decode() {
        let mut table = Table::default();
        let record = full();
        let bytes = table.encode(&record);
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80] {
                let mut changed = bytes.clone();
                changed[i] ^= flip;
                if let Ok(back) = table.decode(&changed, &record) {
                    assert_ne!(back.canonical_bytes(), record.canonical_bytes(), "byte {i}");
                }
            }
            assert!(table.decode(&bytes[..i], &record).is_err(), "cut at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            table.decode(&longer, &record),
            Err(DecodeError::Malformed(bytes.len()))
        );
        // A string the table does not hold.
        let mut unknown = Table::default();
        let bytes = unknown.encode(&record);
        assert_eq!(
            Table::default().decode(&bytes, &record),
            Err(DecodeError::UnknownString(0))
        );
    }
}
