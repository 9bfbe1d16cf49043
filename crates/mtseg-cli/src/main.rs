//! `mtseg`: the command-line face of the mtseg library. Each subcommand is a thin layer over
//! one library stage; errors are printed as one line naming the file and the problem.

mod bench;
mod commands;
mod demo;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages for reuse: with the system allocator every training step
/// returned its large buffers to the kernel and faulted them in again, zeroed (a million page
/// faults in 300 steps of the benchmark's network; bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mtseg",
    version,
    about = "One network, many segmentation tasks, many modalities (Moeskops et al., MICCAI 2016)",
    long_about = "mtseg trains one convolutional network on several segmentation tasks at once \
(brain MRI tissues, breast MRI pectoral muscle, cardiac CTA coronary arteries, or any nnU-Net \
datasets) and segments new scans with it, recognising by itself which task a scan belongs to.\n\n\
Start with `mtseg demo`."
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// CPU threads for the network and the data (default: every core).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(commands::demo::Args),
    Info(commands::info::Args),
    Convert(commands::convert::Args),
    Phantoms(commands::phantoms::Args),
    /// Check nnU-Net raw datasets (`mtseg datasets check DIR...`): every case readable, labels
    /// on the image's grid and listed in dataset.json; prints the joint label space.
    #[command(subcommand)]
    Datasets(commands::datasets::Command),
    Train(commands::train::Args),
    Segment(commands::segment::Args),
    Evaluate(commands::evaluate::Args),
    Overlay(commands::overlay::Args),
    Experiment(commands::experiment::Args),
    Bench(commands::bench::Args),
    Robustness(commands::robustness::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    progress::set_quiet(cli.quiet);
    if let Some(threads) = cli.threads {
        // The first use of rayon's pool fixes its size: set it before any command runs.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.into())
            .build_global()
        {
            eprintln!("error: cannot start {threads} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Demo(args) => commands::demo::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Phantoms(args) => commands::phantoms::run(args),
        Command::Datasets(command) => commands::datasets::run(command),
        Command::Train(args) => commands::train::run(args),
        Command::Segment(args) => commands::segment::run(args),
        Command::Evaluate(args) => commands::evaluate::run(args),
        Command::Overlay(args) => commands::overlay::run(args),
        Command::Experiment(args) => commands::experiment::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Robustness(args) => commands::robustness::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message.push_str(": ");
                    message.push_str(&cause);
                }
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    // wgpu logs every graphics API it probes and does not find (say, no OpenGL driver) as an
    // error, even when another API serves the GPU: shown only with -vv.
    let probing = if verbose >= 2 { level } else { "off" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MTSEG_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("mtseg={level},{level},wgpu_hal={probing}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `mtseg -h` and every subcommand's `-h` say what each command, argument and option does.
    #[test]
    fn every_command_and_argument_has_help() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id();
                assert!(arg.get_help().is_some(), "`{path}`: {id} has no help");
            }
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{path}` has no help");
                check(sub, &path);
            }
        }
        let cli = super::Cli::command();
        assert!(cli.get_subcommands().count() >= 10);
        check(&cli, "mtseg");
    }
}
