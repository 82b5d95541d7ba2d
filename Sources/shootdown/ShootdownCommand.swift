import ArgumentParser
import Shootdown

@main
struct ShootdownCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "shootdown", abstract: "Shootdown benchmark CLI")
    func run() throws {}
}
