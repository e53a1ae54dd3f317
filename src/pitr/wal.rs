//! WAL arithmetic: log sequence numbers, segment numbers and file names, timeline history,
//! and the gap check a restore runs before it starts anything. Pure functions, no I/O.
//!
//! The rules are PostgreSQL's (`src/include/access/xlog_internal.h`): a segment file is named
//! `TTTTTTTTXXXXXXXXYYYYYYYY`, the timeline then the segment number split into the "log" and
//! "segment within log" parts, where a log holds `2^32 / wal_segment_size` segments.

use std::collections::BTreeSet;
use std::fmt;

/// A log sequence number: a byte position in the WAL (`pg_lsn`, written `X/Y` in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = WalError;
    /// Parses PostgreSQL's text form, `16/B374D848`.
    fn from_str(s: &str) -> Result<Lsn, WalError> {
        let bad = || WalError::Lsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors reading WAL names and positions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("`{0}` is not a WAL position (expected hex `X/Y`, as pg_current_wal_lsn() prints)")]
    Lsn(String),
    #[error("wal_segment_size {0} is not a power of two between 1 MB and 1 GB")]
    SegmentSize(u64),
    #[error("`{0}` is not a WAL segment file name (24 hex digits)")]
    SegmentName(String),
}

/// A WAL segment size the server may have (`wal_segment_size`, bytes): a power of two from
/// 1 MB to 1 GB (`initdb --wal-segsize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct SegmentSize(u64);

impl TryFrom<u64> for SegmentSize {
    type Error = WalError;
    fn try_from(bytes: u64) -> Result<SegmentSize, WalError> {
        if bytes.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&bytes) {
            Ok(SegmentSize(bytes))
        } else {
            Err(WalError::SegmentSize(bytes))
        }
    }
}

impl From<SegmentSize> for u64 {
    fn from(s: SegmentSize) -> u64 {
        s.0
    }
}

impl SegmentSize {
    /// PostgreSQL's default, 16 MB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    pub fn bytes(self) -> u64 {
        self.0
    }

    fn per_log(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    /// The segment holding `lsn`.
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// The first position of segment `segno`.
    pub fn start_of(self, segno: u64) -> Lsn {
        Lsn(segno * self.0)
    }

    /// The file name of segment `segno` on timeline `tli`.
    pub fn file_name(self, tli: u32, segno: u64) -> String {
        format!(
            "{tli:08X}{:08X}{:08X}",
            segno / self.per_log(),
            segno % self.per_log()
        )
    }

    /// The timeline and segment number of a segment file name (the first 24 characters of
    /// `name`; `.partial` and other suffixes are the caller's).
    pub fn parse_name(self, name: &str) -> Result<(u32, u64), WalError> {
        let bad = || WalError::SegmentName(name.to_string());
        let hex = name.get(..24).ok_or_else(bad)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let part = |r: std::ops::Range<usize>| u64::from_str_radix(&hex[r], 16).map_err(|_| bad());
        let (tli, log, seg) = (part(0..8)?, part(8..16)?, part(16..24)?);
        if seg >= self.per_log() || tli == 0 {
            return Err(bad());
        }
        Ok((tli as u32, log * self.per_log() + seg))
    }
}

/// Whether `name` is a complete segment's file name (exactly 24 hex digits).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of timeline `tli`'s history file.
pub fn history_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// The timeline of a history file's name (`00000002.history`).
pub fn parse_history_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// What a restore finds missing: the first segment, by name, the chain needs and the archive
/// lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub missing: String,
}

/// The first segment of `from..=to` (on timeline `tli`) that `archived` lacks.
///
/// `archived` holds the segment numbers of the complete segments stored for `tli`.
pub fn first_gap(
    size: SegmentSize,
    tli: u32,
    archived: &BTreeSet<u64>,
    from: u64,
    to: u64,
) -> Option<Gap> {
    (from..=to).find(|s| !archived.contains(s)).map(|s| Gap {
        missing: size.file_name(tli, s),
    })
}

/// The end of the run of consecutive segments from `from` in `archived`: the number of the
/// last one, or `None` when `from` itself is missing.
pub fn contiguous_end(archived: &BTreeSet<u64>, from: u64) -> Option<u64> {
    let mut end = None;
    for s in archived.range(from..) {
        match end {
            None if *s == from => end = Some(*s),
            Some(e) if *s == e + 1 => end = Some(*s),
            _ => break,
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_its_text_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_follow_postgresql() {
        let s = SegmentSize::DEFAULT;
        // 0/3000028 is in segment 3 with 16 MB segments.
        let lsn: Lsn = "0/3000028".parse().unwrap();
        assert_eq!(s.segment_of(lsn), 3);
        assert_eq!(s.file_name(1, 3), "000000010000000000000003");
        // 256 segments of 16 MB make one "log": 1/0 is segment 256, named log 1 segment 0.
        assert_eq!(s.segment_of("1/0".parse().unwrap()), 256);
        assert_eq!(s.file_name(2, 256), "000000020000000100000000");
        assert_eq!(s.file_name(2, 255), "0000000200000000000000FF");
        assert_eq!(
            s.parse_name("0000000200000001000000A0.partial").unwrap(),
            (2, 256 + 0xA0)
        );
        assert_eq!(s.start_of(257), "1/1000000".parse().unwrap());
        // 1 GB segments: 4 per log.
        let big = SegmentSize::try_from(1 << 30).unwrap();
        assert_eq!(big.file_name(1, 5), "000000010000000100000001");
        assert_eq!(big.parse_name("000000010000000100000001").unwrap(), (1, 5));
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        let s = SegmentSize::DEFAULT;
        // Segment part beyond 0xFF cannot exist with 16 MB segments.
        assert!(s.parse_name("000000010000000000000100").is_err());
        assert!(s.parse_name("00000000000000000000000A").is_err());
        assert!(s.parse_name("0000000100000000").is_err());
        assert!(s.parse_name("00000001000000000000000G").is_err());
        assert!(SegmentSize::try_from(3 << 20).is_err());
        assert!(SegmentSize::try_from(1 << 19).is_err());
        assert!(SegmentSize::try_from(2 << 30).is_err());
        assert!(is_segment_name("000000010000000000000003"));
        assert!(!is_segment_name("000000010000000000000003.partial"));
        assert!(!is_segment_name("00000002.history"));
    }

    #[test]
    fn history_names() {
        assert_eq!(history_name(2), "00000002.history");
        assert_eq!(parse_history_name("0000000A.history"), Some(10));
        assert_eq!(parse_history_name("000000010000000000000003"), None);
    }

    #[test]
    fn gap_check_names_the_first_missing_segment() {
        let s = SegmentSize::DEFAULT;
        let archived: BTreeSet<u64> = [3, 4, 5, 7, 8].into();
        assert_eq!(first_gap(s, 1, &archived, 3, 5), None);
        assert_eq!(
            first_gap(s, 1, &archived, 3, 8),
            Some(Gap {
                missing: "000000010000000000000006".into()
            })
        );
        assert_eq!(
            first_gap(s, 1, &archived, 2, 3).unwrap().missing,
            "000000010000000000000002"
        );
        assert_eq!(contiguous_end(&archived, 3), Some(5));
        assert_eq!(contiguous_end(&archived, 7), Some(8));
        assert_eq!(contiguous_end(&archived, 6), None);
    }
}
