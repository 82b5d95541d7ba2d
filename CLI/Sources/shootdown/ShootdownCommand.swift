@_spi(Benchmarking) import Shootdown
import ArgumentParser

@main
struct ShootdownCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shootdown",
        abstract: "Benchmarks of the Shootdown invalidation engine.",
        discussion: """
            Without a subcommand, runs the headline suite (about 15 seconds on an idle 2-vCPU \
            machine) and prints each key figure beside its target. `shootdown bench WORKLOAD` runs \
            one workload with every knob.
            """,
        subcommands: [Headline.self, Bench.self, Replay.self, Torture.self, VerifyKernel.self, PerfProbe.self],
        defaultSubcommand: Headline.self)
}

/// Ctrl-C handling shared by every command.
func installInterruptHandler() { BenchmarkSupport.installInterruptHandler() }
