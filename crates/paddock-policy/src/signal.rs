//! Signal names as a policy writes them (`TERM`, `SIGTERM` or `15`), and
//! their numbers on Linux x86-64, the only guest architecture Paddock runs.

/// Linux's standard signals by number (index 0 is unused).
const NAMES: [&str; 32] = [
    "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// The number of a signal named `TERM`, `SIGTERM`, `sigterm` or `15`
/// (1 to [`paddock_proto::MAX_SIGNAL`]); `None` for anything else.
#[must_use]
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(number) = name.parse::<i32>() {
        return (1..=paddock_proto::MAX_SIGNAL)
            .contains(&number)
            .then_some(number);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|known| !known.is_empty() && *known == bare)
        .and_then(|index| i32::try_from(index).ok())
}

/// The short name of signal `number` (`TERM` for 15), or its number for a
/// real-time signal.
#[must_use]
pub fn signal_name(number: i32) -> String {
    usize::try_from(number)
        .ok()
        .and_then(|index| NAMES.get(index))
        .filter(|name| !name.is_empty())
        .map_or_else(|| number.to_string(), |name| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("sigint"), Some(2));
        assert_eq!(signal_number("34"), Some(34));
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("65"), None);
        assert_eq!(signal_number("TERMINATE"), None);
        assert_eq!(signal_number(""), None);
        assert_eq!(signal_name(15), "TERM");
        assert_eq!(signal_name(40), "40");
        for number in 1..32 {
            assert_eq!(signal_number(&signal_name(number)), Some(number));
        }
    }
}
