//! CPU spent per command during the commands mode's load: the whole machine's and the
//! server's. On this shared 2-core machine commands/s moves by a tenth between identical
//! runs, while the CPU a command costs moves far less: a change that saves work shows here
//! first. Read from `/proc` (Linux); elsewhere nothing is printed.

/// Whose CPU counts as the server's.
#[derive(Clone, Copy)]
pub enum Server {
    /// This process, less the bench's own threads (named `bench-…`).
    ThisProcess,
    /// The server's own process (`--server-process`).
    Process(u32),
    /// Started apart (`--url`): only the machine is measured.
    Elsewhere,
}

/// What the counters read at one moment.
pub struct Sample {
    /// Busy and total CPU seconds of the machine since boot, over all cores.
    machine: Option<(f64, f64)>,
    /// CPU seconds of the server since it started.
    process: Option<f64>,
}

/// CPU seconds spent between two samples.
#[derive(Default)]
pub struct Spent {
    /// All cores' busy time: the server, PostgreSQL, the client, the kernel.
    pub machine: Option<f64>,
    /// The share of the machine's time that was busy.
    pub busy_share: Option<f64>,
    pub server: Option<f64>,
}

/// `/proc/stat` counts in clock ticks of this many per second (`USER_HZ`, fixed at 100 for
/// user space on Linux).
const TICKS: f64 = 100.0;

impl Sample {
    pub fn take(server: Server) -> Self {
        let process = match server {
            Server::ThisProcess => Some(crate::chat::server_cpu()),
            Server::Process(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .map(|stat| process_ticks(&stat) / TICKS),
            Server::Elsewhere => None,
        };
        Self {
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| machine_ticks(&s)),
            process,
        }
    }

    pub fn since(&self, before: &Sample) -> Spent {
        let machine = self
            .machine
            .zip(before.machine)
            .map(|((busy, total), (busy0, total0))| (busy - busy0, total - total0));
        Spent {
            machine: machine.map(|(busy, _)| busy),
            busy_share: machine.and_then(|(busy, total)| (total > 0.0).then(|| busy / total)),
            server: self.process.zip(before.process).map(|(a, b)| a - b),
        }
    }
}

impl Spent {
    /// Prints the CPU per command of `commands` commands.
    pub fn print(&self, commands: usize) {
        let Some(machine) = self.machine.filter(|_| commands > 0) else {
            return;
        };
        let per = |secs: f64| secs * 1e6 / commands as f64;
        let mut line = format!(
            "CPU per command: machine {:.0} µs ({:.0}% of its cores busy)",
            per(machine),
            self.busy_share.unwrap_or(0.0) * 100.0
        );
        if let Some(server) = self.server {
            line.push_str(&format!(
                ", server process {:.0} µs, the rest (PostgreSQL, client, kernel) {:.0} µs",
                per(server),
                per(machine - server)
            ));
        }
        println!("{line}");
    }
}

/// Busy and total ticks from the first line of `/proc/stat`: user, nice, system, idle,
/// iowait, irq, softirq, steal (guest time is already within user).
fn machine_ticks(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 8 {
        return None;
    }
    let idle = f[3] + f[4];
    let total: f64 = f.iter().sum();
    Some(((total - idle) / TICKS, total / TICKS))
}

/// utime + stime of a `/proc/<pid>/stat` line, in ticks.
pub fn process_ticks(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces): utime is the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    t(11) + t(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_counts_everything_but_idle_and_iowait_as_busy() {
        let (busy, total) =
            machine_ticks("cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n").unwrap();
        assert_eq!((busy, total), (1.6, 10.0));
        assert!(machine_ticks("intr 1 2 3").is_none());
    }

    #[test]
    fn a_process_counts_its_user_and_system_ticks() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        assert_eq!(process_ticks(stat), 280.0);
    }
}
