//! Properties of the deadline propagation codecs.

use std::time::Duration;

use proptest::prelude::*;
use tower_adaptive_timeout::propagate::{
    format_grpc_timeout, format_millis, parse_grpc_timeout, parse_millis, BadBudget,
};

const UNITS: [(u8, Duration); 6] = [
    (b'n', Duration::from_nanos(1)),
    (b'u', Duration::from_micros(1)),
    (b'm', Duration::from_millis(1)),
    (b'S', Duration::from_secs(1)),
    (b'M', Duration::from_secs(60)),
    (b'H', Duration::from_secs(3600)),
];

const SATURATED: Duration = Duration::from_secs(99_999_999 * 3600);
/// The largest milliseconds value `parse_millis` reads: 19 nines.
const MILLIS_MAX: u64 = 9_999_999_999_999_999_999;

fn unit_of(byte: u8) -> Duration {
    UNITS
        .iter()
        .find(|(b, _)| *b == byte)
        .map(|(_, d)| *d)
        .expect("a known unit")
}

/// Durations spread over every unit's range, plus the extremes.
fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..1_000_000_000).prop_map(Duration::from_nanos),
        (0u64..10_000_000_000_000).prop_map(Duration::from_nanos),
        (0u64..10_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..1_000_000_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(SATURATED),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn format_then_parse_never_grows_and_loses_under_one_unit(d in any_duration()) {
        let text = format_grpc_timeout(d);
        let bytes = text.as_bytes();
        prop_assert!((2..=9).contains(&bytes.len()), "{}", text);
        prop_assert_eq!(text.as_str().as_bytes(), bytes);
        let back = parse_grpc_timeout(bytes).expect("formatted values parse");
        prop_assert!(back <= d, "{} parsed to {:?} > {:?}", text, back, d);
        if d > SATURATED {
            prop_assert_eq!(text.as_str(), "99999999H");
        } else {
            let unit = unit_of(bytes[bytes.len() - 1]);
            let lost = d - back;
            prop_assert!(lost < unit, "{} lost {:?} of {:?}", text, lost, d);
            // A non-zero budget never formats as zero.
            prop_assert_eq!(back.is_zero(), d.is_zero());
        }
    }

    #[test]
    fn format_is_nanoseconds_below_a_millisecond_then_the_finest_unit_from_m(
        d in any_duration(),
    ) {
        let text = format_grpc_timeout(d);
        let bytes = text.as_bytes();
        let unit = bytes[bytes.len() - 1];
        if d < Duration::from_millis(1) {
            prop_assert_eq!(unit, b'n', "{} for {:?}", text, d);
            return Ok(());
        }
        let chosen = UNITS.iter().position(|(b, _)| *b == unit).expect("a known unit");
        prop_assert!(chosen >= 2, "{} for {:?}: nothing finer than m", text, d);
        // Every finer unit from milliseconds on would need more than 8 digits.
        for (_, finer) in &UNITS[2..chosen] {
            prop_assert!(d.as_nanos() / finer.as_nanos() > 99_999_999, "{} for {:?}", text, d);
        }
    }

    #[test]
    fn millis_round_down_and_never_reach_zero_while_live(d in any_duration()) {
        let millis = format_millis(d);
        prop_assert_eq!(millis == 0, d.is_zero());
        if d >= Duration::from_millis(1) && d.as_millis() <= u128::from(MILLIS_MAX) {
            prop_assert!(u128::from(millis) == d.as_millis());
        }
    }

    #[test]
    fn every_formatted_millis_value_parses_back(d in any_duration()) {
        let millis = format_millis(d);
        prop_assert!(millis <= MILLIS_MAX, "{} for {:?}", millis, d);
        let back = parse_millis(millis.to_string().as_bytes());
        prop_assert!(back.is_ok(), "{} for {:?}: {:?}", millis, d, back);
        prop_assert!(back.unwrap() <= d.max(Duration::from_millis(1)));
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(d) = parse_grpc_timeout(&bytes) {
            prop_assert!((2..=9).contains(&bytes.len()));
            let (unit, digits) = bytes.split_last().unwrap();
            prop_assert!(digits.iter().all(u8::is_ascii_digit));
            prop_assert!(d <= SATURATED);
            prop_assert!(UNITS.iter().any(|(b, _)| b == unit));
        }
        if parse_millis(&bytes).is_ok() {
            prop_assert!((1..=19).contains(&bytes.len()));
            prop_assert!(bytes.iter().all(u8::is_ascii_digit));
        }
    }

    #[test]
    fn parsers_never_panic_on_near_misses(s in "[-+ .0-9HMSmunx]{0,12}") {
        let _ = parse_grpc_timeout(s.as_bytes());
        let _ = parse_millis(s.as_bytes());
    }

    #[test]
    fn valid_grpc_values_parse_exactly(
        value in 0u64..=99_999_999,
        zeros in 0usize..8,
        unit in 0usize..UNITS.len(),
    ) {
        let digits = value.to_string();
        let zeros = zeros.min(8 - digits.len());
        let (byte, scale) = UNITS[unit];
        let text = format!("{}{}{}", "0".repeat(zeros), digits, byte as char);
        let want = scale * u32::try_from(value).unwrap();
        prop_assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(want), "{}", text);
    }

    #[test]
    fn nine_or_more_digits_are_refused(value in 100_000_000u64.., unit in 0usize..UNITS.len()) {
        let text = format!("{}{}", value, UNITS[unit].0 as char);
        prop_assert_eq!(parse_grpc_timeout(text.as_bytes()), Err(BadBudget::TooLong));
    }

    #[test]
    fn valid_millis_parse_exactly(value in 0u64..=9_999_999_999_999_999_999) {
        let text = value.to_string();
        prop_assert_eq!(parse_millis(text.as_bytes()), Ok(Duration::from_millis(value)));
    }

    #[test]
    fn twenty_digit_millis_are_refused(value in 10_000_000_000_000_000_000u64..) {
        let text = value.to_string();
        prop_assert_eq!(parse_millis(text.as_bytes()), Err(BadBudget::TooLong));
    }
}
