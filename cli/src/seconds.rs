//! `--timeout SECS` of `exec` and `bg wait`: seconds with fractions, refused
//! by clap (exit 2, the value quoted) before anything is written when they
//! are not a usable duration.

use std::time::Duration;

/// The smallest timeout a request can carry: it travels in milliseconds, so
/// anything shorter would reach the executor as zero.
const RESOLUTION: Duration = Duration::from_millis(1);

/// `exec --timeout`: finite, at least one millisecond. The upper bound
/// (`RUNBOX_MAX_TIMEOUT_SECS`) is the configuration's and checked with it.
pub fn timeout(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < RESOLUTION {
        return Err("a timeout is at least 0.001 seconds".to_owned());
    }
    Ok(d)
}

/// `bg wait --timeout`: finite and not negative; zero looks once without
/// waiting.
pub fn wait(s: &str) -> Result<Duration, String> {
    duration(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, such as 30 or 0.5".to_owned())?;
    if !secs.is_finite() {
        return Err("expected a finite number of seconds".to_owned());
    }
    if secs < 0.0 {
        return Err("seconds must not be negative".to_owned());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_values_are_refused() {
        for bad in [
            "-1", "nan", "NaN", "inf", "-inf", "1e-9", "0", "0.0001", "", "ten", "1e400",
        ] {
            assert!(timeout(bad).is_err(), "{bad:?}");
        }
        assert_eq!(timeout("0.001"), Ok(Duration::from_millis(1)));
        assert_eq!(timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(wait("0"), Ok(Duration::ZERO));
        assert!(wait("-0.5").is_err());
    }
}
