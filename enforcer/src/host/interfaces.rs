//! Network interfaces by name and by index.

use std::ffi::{CStr, CString};

/// The index of interface `name`, or `None` when the host has none by that name.
pub fn index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index`, or `None` when the host has none with that index
/// (any more).
pub fn name(index: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buffer` holds IF_NAMESIZE bytes, as `if_indextoname` requires.
    let found = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round_trips_and_unknown_names_are_none() {
        let lo = index("lo").expect("every host has a loopback interface");
        assert_eq!(name(lo).as_deref(), Some("lo"));
        assert_eq!(index("no-such-if0"), None);
        assert_eq!(index("bad\0name"), None);
        assert_eq!(name(0), None);
    }
}
