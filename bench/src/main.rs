//! `reddot-bench`: load scenarios against real release builds of the producer and the
//! gateway, on the local RabbitMQ and PostgreSQL or SQLite. Each prints a markdown
//! table and a JSON line; a run that loses or duplicates a delivery fails.
//!
//! `cargo run --release -p reddot-bench -- <scenario> [--quick] [--db sqlite|postgres] [--clients N]`
//! (`floor` runs no Reddot at all: the machine's own limit for `broadcast`)
//! (`soak` also takes `--minutes M`, default 5; 20 s under `--quick`)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod floor;
mod report;
mod scenarios;
mod soak;

use anyhow::bail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [first, n] = &args[..]
        && first == floor::SERVER_ARG
    {
        raise_fd_limit();
        return tokio::task::spawn_blocking({
            let n = n.parse()?;
            move || floor::serve(n)
        })
        .await?;
    }
    // A mistake on the command line is told plainly, without a backtrace.
    let parsed = match parse(&args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // On a worker rather than on the main thread: every delivery the client reads is
    // sent to the scenario's task, and waking a parked main thread for each costs the
    // load generator a futex call and a context switch per delivery.
    tokio::spawn(run(parsed)).await?
}

const SCENARIOS: [&str; 10] = [
    "produce",
    "targeted",
    "latency",
    "broadcast",
    "floor",
    "storm",
    "idle",
    "poll",
    "soak",
    "all",
];

const USAGE: &str = "usage: reddot-bench <produce|targeted|broadcast|floor|storm|idle|poll|soak|all> [--quick] [--db sqlite|postgres] [--clients N] [--minutes M]";

/// The command line, checked: a misspelt flag or value is an error, not a silently
/// different run.
struct Args {
    scenario: String,
    opts: scenarios::Opts,
    minutes: Option<f64>,
}

fn parse(args: &[String]) -> anyhow::Result<Option<Args>> {
    let mut scenario = None;
    let mut opts = scenarios::Opts {
        quick: false,
        db: None,
        clients: None,
    };
    let mut minutes = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => opts.quick = true,
            "--db" => match value("--db")?.as_str() {
                db @ ("sqlite" | "postgres") => opts.db = Some(db.to_owned()),
                other => bail!("--db must be sqlite or postgres, not {other:?}\n{USAGE}"),
            },
            "--clients" => {
                let n = value("--clients")?;
                opts.clients = Some(match n.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => bail!("--clients must be a positive number, not {n:?}\n{USAGE}"),
                });
            }
            "--minutes" => {
                let m = value("--minutes")?;
                minutes = Some(match m.parse::<f64>() {
                    Ok(m) if m > 0.0 && m.is_finite() => m,
                    _ => bail!("--minutes must be a positive number, not {m:?}\n{USAGE}"),
                });
            }
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            name if scenario.is_none() => {
                if !SCENARIOS.contains(&name) {
                    bail!("unknown scenario {name:?}\n{USAGE}");
                }
                scenario = Some(name.to_owned());
            }
            extra => bail!("one scenario at a time (got {extra:?} too)\n{USAGE}"),
        }
    }
    let Some(scenario) = scenario else {
        bail!("no scenario given\n{USAGE}");
    };
    Ok(Some(Args {
        scenario,
        opts,
        minutes,
    }))
}

async fn run(
    Args {
        scenario,
        opts,
        minutes,
    }: Args,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let one = [scenario.as_str()];
    let names: &[&str] = match scenario.as_str() {
        // soak joins `all` under --quick (20 s); its full length (5 min) is run on its own.
        "all" if opts.quick => &[
            "produce",
            "targeted",
            "broadcast",
            "floor",
            "storm",
            "poll",
            "soak",
            "idle",
        ],
        "all" => &[
            "produce",
            "targeted",
            "broadcast",
            "floor",
            "storm",
            "poll",
            "idle",
        ],
        _ => &one,
    };
    for name in names {
        let before = report::CpuTimes::now();
        match *name {
            "produce" => scenarios::produce(&opts).await?,
            "latency" | "targeted" => scenarios::latency(&opts).await?,
            "idle" => scenarios::idle(&opts).await?,
            "broadcast" => scenarios::broadcast(&opts).await?,
            "floor" => floor::floor(&opts).await?,
            "poll" => scenarios::poll(&opts).await?,
            "storm" => scenarios::storm(&opts).await?,
            "soak" => soak::soak(&opts, minutes).await?,
            other => bail!("unknown scenario {other:?}\n{USAGE}"),
        }
        report::machine(name, before);
    }
    Ok(())
}

/// Thousands of sockets need more than the usual 1,024 descriptors (children inherit it);
/// `floor` holds both ends of 10,000 connections. Above the hard limit only if allowed.
fn raise_fd_limit() {
    const WANTED: u64 = 65_536;
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let wanted = hard.max(WANTED);
        if rlimit::Resource::NOFILE.set(wanted, wanted).is_err() {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn help_asks_for_the_usage() {
        assert!(parse(&args("--help")).unwrap().is_none());
        assert!(parse(&args("produce -h")).unwrap().is_none());
    }

    #[test]
    fn flags_and_values_are_read() {
        let a = parse(&args("produce --db postgres --clients 64 --quick"))
            .unwrap()
            .unwrap();
        assert_eq!(a.scenario, "produce");
        assert_eq!(a.opts.db.as_deref(), Some("postgres"));
        assert_eq!(a.opts.clients, Some(64));
        assert!(a.opts.quick);
        let soak = parse(&args("soak --minutes 2.5")).unwrap().unwrap();
        assert_eq!(soak.minutes, Some(2.5));
    }

    #[test]
    fn mistakes_are_errors_that_name_them() {
        for (line, named) in [
            ("", "no scenario"),
            ("produce --db pg", "\"pg\""),
            ("produce --db", "--db needs a value"),
            ("produce --clients 0", "\"0\""),
            ("soak --minutes soon", "\"soon\""),
            ("produce --verbose", "--verbose"),
            ("prodcue", "\"prodcue\""),
            ("produce poll", "\"poll\""),
        ] {
            let err = parse(&args(line)).err().unwrap().to_string();
            assert!(err.contains(named), "{line:?}: {err}");
            assert!(err.contains("usage: reddot-bench"), "{line:?}: {err}");
        }
    }
}
