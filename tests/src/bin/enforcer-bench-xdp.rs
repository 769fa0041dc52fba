//! `enforcer-bench-xdp POLICY REPEAT RUNS`: the per-packet cost of the XDP program, by
//! `BPF_PROG_TEST_RUN`, next to an empty XDP program measured in the same process.
//!
//! The policy is compiled and applied to a freshly loaded (unattached) kernel object.
//! Then each probe packet runs `RUNS` times `REPEAT` times; each line printed is
//! `LABEL ACTION MEDIAN_NS`, where ACTION is the XDP return code (1 drop, 2 pass) and
//! MEDIAN_NS the median over the runs of the kernel's mean time per packet. Probe
//! packets, all IPv4 TCP from 198.18.0.1 (the first address of segment `s0` in the
//! benchmark's generated policies):
//! - `allow`: a SYN to port 10001, allowed by rule `bench-allow`;
//! - `deny`: a SYN to port 10002, denied by rule `bench-deny`;
//! - `no-match`: a SYN to port 10003, which no rule covers (default deny);
//! - `established`: an ACK to port 10001, parsed and passed without a decision.
//!
//! Run by `./x bench xdp`, which generates the policies and writes the table.

use std::{
    net::Ipv4Addr,
    os::fd::{FromRawFd as _, OwnedFd},
    process::ExitCode,
    time::Duration,
};

use enforcer::{
    loader::Loader,
    policy::{compile_sources, source::SourceSet},
};
use enforcer_tests::packet::{ACK, SYN, tcp4};

/// Source of every probe packet: inside `s0`'s 198.18.0.0/28.
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [policy, repeat, runs] = args.as_slice() else {
        eprintln!("usage: enforcer-bench-xdp POLICY REPEAT RUNS");
        return ExitCode::from(2);
    };
    let (Ok(repeat), Ok(runs)) = (repeat.parse::<u32>(), runs.parse::<usize>()) else {
        eprintln!("REPEAT and RUNS are numbers");
        return ExitCode::from(2);
    };
    match bench(policy, repeat, runs.max(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-xdp: {err}");
            ExitCode::FAILURE
        }
    }
}

fn bench(policy: &str, repeat: u32, runs: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(policy).map_err(|e| format!("{policy}: {e}"))?;
    let mut sources = SourceSet::default();
    sources.add(policy, &text);
    let image = compile_sources(sources)
        .map_err(|rejected| format!("{policy} is invalid: {:?}", rejected.diagnostics))?
        .image;
    let mut loader = Loader::load().map_err(|e| e.to_string())?;
    let root = enforcer::host::cgroup2_mount().map_err(|e| e.to_string())?;
    loader.apply(&image, &root).map_err(|e| e.to_string())?;

    let empty = EmptyXdp::load()?;
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2].as_nanos()
    };
    let probe = tcp4(SOURCE, 10001, SYN);
    let mut samples = Vec::new();
    let mut action = 0;
    for _ in 0..runs {
        let (code, mean) = empty.test_run(&probe, repeat)?;
        action = code;
        samples.push(mean);
    }
    println!("empty {action} {}", median(samples));

    for (label, packet) in [
        ("allow", tcp4(SOURCE, 10001, SYN)),
        ("deny", tcp4(SOURCE, 10002, SYN)),
        ("no-match", tcp4(SOURCE, 10003, SYN)),
        ("established", tcp4(SOURCE, 10001, ACK)),
    ] {
        let mut samples = Vec::new();
        let mut action = 0;
        for _ in 0..runs {
            let (code, mean) = loader
                .test_run_xdp(&packet, repeat)
                .map_err(|e| e.to_string())?;
            action = code;
            samples.push(mean);
        }
        println!("{label} {action} {}", median(samples));
    }
    Ok(())
}

/// The floor: an XDP program of two instructions, `r0 = XDP_PASS; exit`, loaded through
/// the raw `bpf()` system call (aya loads programs only from objects).
struct EmptyXdp {
    fd: OwnedFd,
}

/// `BPF_PROG_LOAD` attributes (the leading fields of `union bpf_attr`; the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u64; 12],
}

/// `BPF_PROG_TEST_RUN` attributes (the `test` member of `union bpf_attr`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    rest: [u64; 8],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// Calls `bpf(cmd, attr, size_of(attr))`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, String> {
    // SAFETY: `attr` is a valid, writable `repr(C)` attribute block of the size passed,
    // laid out as the kernel's `union bpf_attr` member for `cmd`, with every pointer in
    // it valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(format!(
            "bpf({cmd}) failed: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(rc)
    }
}

impl EmptyXdp {
    fn load() -> Result<Self, String> {
        // `mov64 r0, 2` (XDP_PASS), then `exit`.
        let instructions: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: 2,
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        let fd = i32::try_from(fd).map_err(|_| "bpf() returned a bad descriptor".to_owned())?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), String> {
        use std::os::fd::AsRawFd as _;
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(self.fd.as_raw_fd()).expect("descriptors are positive"),
            data_size_in: u32::try_from(packet.len()).expect("small packet"),
            data_size_out: u32::try_from(out.len()).expect("small buffer"),
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok((attr.retval, Duration::from_nanos(u64::from(attr.duration))))
    }
}
