//! Reboot windows: the days and UTC times in which a node may take a slot and reboot.
//!
//! A window is written as `DAYS HH:MM-HH:MM` (UTC): `Mon-Fri 02:00-04:00`,
//! `Sat,Sun 22:30-01:00` (past midnight: it belongs to the day it starts on),
//! `* 00:00-24:00`. Several windows join into [`Windows`]; no window at all means always.

use crate::error::{Error, Result};

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// One reboot window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days it starts on, Monday = bit 0.
    days: u8,
    /// Minutes after midnight UTC.
    start: u32,
    /// Length in minutes (1 to 1440).
    length: u32,
}

/// Any number of windows; a time is inside when it is inside one. Empty: always inside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows(pub Vec<Window>);

fn invalid(text: &str, reason: &str) -> Error {
    Error::Invalid {
        what: format!("reboot window {text:?}"),
        reason: reason.into(),
    }
}

fn day(text: &str, name: &str) -> Result<u32> {
    let lower = name.to_ascii_lowercase();
    // Mon or Monday.
    DAYS.iter()
        .position(|d| lower == *d || lower.len() == 3 && d.starts_with(&lower))
        .map(|i| i as u32)
        .ok_or_else(|| invalid(text, &format!("{name:?} is not a day (Mon..Sun)")))
}

fn minutes(text: &str, hhmm: &str) -> Result<u32> {
    let (h, m) = hhmm
        .split_once(':')
        .ok_or_else(|| invalid(text, &format!("{hhmm:?} is not HH:MM")))?;
    let digits =
        |s: &str, n: usize| s.len() <= n && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (h, m) = match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(hv), Ok(mv))
            if digits(h, 2)
                && m.len() == 2
                && digits(m, 2)
                && mv < 60
                && (hv < 24 || hv == 24 && mv == 0) =>
        {
            (hv, mv)
        }
        _ => {
            return Err(invalid(
                text,
                &format!("{hhmm:?} is not a time from 00:00 to 24:00"),
            ))
        }
    };
    Ok(h * 60 + m)
}

impl std::str::FromStr for Window {
    type Err = Error;

    fn from_str(text: &str) -> Result<Window> {
        let (days_text, times) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| invalid(text, "expected DAYS HH:MM-HH:MM"))?;
        let mut days = 0u8;
        for part in days_text.split(',') {
            if part == "*" {
                days = 0x7f;
                continue;
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (day(text, a)?, day(text, b)?),
                None => (day(text, part)?, day(text, part)?),
            };
            // Fri-Mon wraps over the weekend.
            let mut d = a;
            loop {
                days |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (from, to) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| invalid(text, "expected HH:MM-HH:MM after the days"))?;
        let (start, end) = (minutes(text, from.trim())?, minutes(text, to.trim())?);
        if start == 1440 {
            return Err(invalid(text, "a window starts before 24:00"));
        }
        let length = if end > start {
            end - start
        } else {
            end + 1440 - start
        };
        Ok(Window {
            days,
            start,
            length,
        })
    }
}

impl Window {
    /// Whether `unix` (seconds since the epoch, UTC) is inside the window.
    pub fn contains(&self, unix: u64) -> bool {
        let minute_of_week = |t: u64| {
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            let days = t / 86_400;
            (((days + 3) % 7) as u32, ((t % 86_400) / 60) as u32)
        };
        let (weekday, minute) = minute_of_week(unix);
        // Started today, or yesterday and running past midnight.
        let today = self.days & (1 << weekday) != 0
            && minute >= self.start
            && minute < self.start + self.length;
        let yesterday = (weekday + 6) % 7;
        let from_yesterday = self.days & (1 << yesterday) != 0
            && self.start + self.length > 1440
            && minute + 1440 < self.start + self.length;
        today || from_yesterday
    }
}

impl Windows {
    /// Parse each text as a [`Window`].
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Windows> {
        texts
            .iter()
            .map(|t| t.as_ref().parse())
            .collect::<Result<_>>()
            .map(Windows)
    }

    /// Whether `unix` is inside a window (always, when there is none).
    pub fn contains(&self, unix: u64) -> bool {
        self.0.is_empty() || self.0.iter().any(|w| w.contains(unix))
    }

    /// The first whole minute at or after `unix` inside a window (within a week), or
    /// `None` when no window has a day.
    pub fn next_open(&self, unix: u64) -> Option<u64> {
        if self.contains(unix) {
            return Some(unix);
        }
        // Checked: a time near the end of u64 has no next minute rather than a panic.
        let first = (unix - unix % 60).checked_add(60)?;
        (0..8 * 1440u64)
            .map_while(|m| first.checked_add(m * 60))
            .find(|&t| self.contains(t))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // 2026-11-30 is a Monday.
    const MONDAY: u64 = 1_795_996_800;

    #[test]
    fn monday_is_monday() {
        let w: Window = "Mon 00:00-00:01".parse().unwrap();
        assert!(w.contains(MONDAY));
        assert!(!w.contains(MONDAY + 60));
        assert!(!w.contains(MONDAY - 1));
    }

    #[test]
    fn windows_past_midnight_belong_to_their_first_day() {
        let w: Window = "Sun 23:00-01:00".parse().unwrap();
        let sunday_2330 = MONDAY - 1800;
        assert!(w.contains(sunday_2330));
        assert!(w.contains(MONDAY + 3599), "Monday 00:59 is Sunday's window");
        assert!(!w.contains(MONDAY + 3600));
        assert!(
            !w.contains(MONDAY + 6 * 86_400 + 1800),
            "not Saturday night"
        );
    }

    #[test]
    fn ranges_lists_and_every_day() {
        let w: Window = "Fri-Mon,Wed 02:00-04:00".parse().unwrap();
        let at = |day: u64, h: u64| MONDAY + day * 86_400 + h * 3600;
        let inside: Vec<bool> = (0..7).map(|d| w.contains(at(d, 3))).collect();
        assert_eq!(inside, [true, false, true, false, true, true, true]);
        assert!(!w.contains(at(0, 4)));
        let all: Window = "* 00:00-24:00".parse().unwrap();
        assert!((0..7 * 24).all(|h| all.contains(MONDAY + h * 3600)));
    }

    #[test]
    fn next_open_and_errors() {
        let ws = Windows::parse(&["Tue 02:00-03:00"]).unwrap();
        assert_eq!(ws.next_open(MONDAY), Some(MONDAY + 86_400 + 7200));
        assert!(Windows::default().contains(MONDAY));
        // Near the end of u64: an answer, not an overflow.
        for t in [u64::MAX - 30, u64::MAX] {
            assert!(ws.next_open(t).is_none_or(|open| open >= t));
        }
        for bad in [
            "Mon",
            "Mon 2-3",
            "Xyz 02:00-03:00",
            "Mon 25:00-26:00",
            "Mon 02:60-03:00",
        ] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
