//! The host settings array: de-duplication window, ephemeral port range, fail-closed
//! switch. Host state, kept across generations.

use aya::maps::{Array, MapData};
use enforcer_common::maps::{HOST_SETTINGS, HostSettings};

use super::{LoaderError, MapSet, map_error};

/// The settings in force.
pub(super) fn read(maps: &mut impl MapSet) -> Result<HostSettings, LoaderError> {
    let array: Array<&mut MapData, HostSettings> =
        Array::try_from(maps.map_mut(HOST_SETTINGS)?).map_err(map_error(HOST_SETTINGS))?;
    array.get(&0, 0).map_err(map_error(HOST_SETTINGS))
}

/// Replaces the settings.
pub(super) fn write(maps: &mut impl MapSet, settings: HostSettings) -> Result<(), LoaderError> {
    let mut array: Array<&mut MapData, HostSettings> =
        Array::try_from(maps.map_mut(HOST_SETTINGS)?).map_err(map_error(HOST_SETTINGS))?;
    array.set(0, &settings, 0).map_err(map_error(HOST_SETTINGS))
}

/// Switches fail-closed mode: while on, every new flow but failsafe access is denied.
pub(super) fn set_fail_closed(maps: &mut impl MapSet, on: bool) -> Result<(), LoaderError> {
    let mut settings = read(maps)?;
    settings.fail_closed = u8::from(on);
    write(maps, settings)
}
