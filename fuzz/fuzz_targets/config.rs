//! Any text fed to the agent's config checker must give a config or problems that render,
//! never a panic.
#![no_main]

use enforcer::config::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse("fuzz.toml", text) {
        Ok(config) => {
            let _ = format!("{config:?}");
            for name in ["eth0", "lo", "veth-a"] {
                let _ = config.interfaces.selects(name);
            }
        }
        Err(rejected) => {
            assert!(
                !rejected.problems.is_empty(),
                "a refused config names a problem"
            );
            let _ = rejected.to_string();
        }
    }
});
