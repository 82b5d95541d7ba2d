import Foundation

/// A grouped bar chart as a standalone SVG file: one group of bars per category (the values of a
/// compared knob), one bar per series in each group, each bar labelled with its value, and an
/// optional caption under each group. What `--compare ... --plot` draws when nothing is swept.
struct SVGBarChart {
    struct Series {
        var name: String
        /// One value per category.
        var values: [Double]
    }

    var title: String
    var subtitle: String
    var yLabel: String
    var categories: [String]
    /// One line under each category's name (for example its ratio to a baseline).
    var captions: [String]
    var series: [Series]

    private let width = 720.0
    private let height = 440.0
    private let left = 80.0
    private let right = 150.0
    private let top = 64.0
    private let bottom = 70.0
    private static let colors = ["#9ecae1", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]

    func render() -> String {
        let maxY = niceCeiling((series.flatMap(\.values).max() ?? 1) * 1.1)
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        func py(_ y: Double) -> Double { top + plotHeight - y / maxY * plotHeight }
        let groupWidth = plotWidth / Double(max(categories.count, 1))
        let barWidth = groupWidth * 0.7 / Double(max(series.count, 1))

        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="24" text-anchor="middle" font-size="16">\(escape(title))</text>
            <text x="\(width / 2)" y="44" text-anchor="middle" fill="#555">\(escape(subtitle))</text>

            """
        for step in 0...5 {
            let value = maxY * Double(step) / 5
            let y = py(value)
            svg += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(left - 8)\" y=\"\(y + 4)\" text-anchor=\"end\">\(format(value))</text>\n"
        }
        for (group, category) in categories.enumerated() {
            let groupLeft = left + Double(group) * groupWidth + groupWidth * 0.15
            for (index, line) in series.enumerated() where group < line.values.count {
                let value = line.values[group]
                let x = groupLeft + Double(index) * barWidth
                let y = py(value)
                let color = Self.colors[index % Self.colors.count]
                svg += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(barWidth - 2)\" height=\"\(top + plotHeight - y)\" fill=\"\(color)\"/>\n"
                svg += "<text x=\"\(x + barWidth / 2 - 1)\" y=\"\(y - 4)\" text-anchor=\"middle\" font-size=\"10\">\(format(value))</text>\n"
            }
            let center = left + (Double(group) + 0.5) * groupWidth
            svg += "<text x=\"\(center)\" y=\"\(top + plotHeight + 18)\" text-anchor=\"middle\">\(escape(category))</text>\n"
            if group < captions.count {
                svg += "<text x=\"\(center)\" y=\"\(top + plotHeight + 34)\" text-anchor=\"middle\" fill=\"#555\">\(escape(captions[group]))</text>\n"
            }
        }
        svg += "<line x1=\"\(left)\" y1=\"\(top + plotHeight)\" x2=\"\(left + plotWidth)\" y2=\"\(top + plotHeight)\" stroke=\"#333\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotHeight)\" stroke=\"#333\"/>\n"
        svg += "<text transform=\"translate(20 \(top + plotHeight / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (index, line) in series.enumerated() {
            let color = Self.colors[index % Self.colors.count]
            let legendY = top + 10 + Double(index) * 20
            svg += "<rect x=\"\(left + plotWidth + 15)\" y=\"\(legendY - 9)\" width=\"12\" height=\"12\" fill=\"\(color)\"/>\n"
            svg += "<text x=\"\(left + plotWidth + 32)\" y=\"\(legendY + 1)\">\(escape(line.name))</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    private func niceCeiling(_ value: Double) -> Double {
        guard value > 0 else { return 1 }
        let magnitude = pow(10, floor(log10(value)))
        for factor in [1.0, 2.0, 2.5, 5.0, 10.0] where factor * magnitude >= value { return factor * magnitude }
        return 10 * magnitude
    }

    private func format(_ value: Double) -> String {
        if value >= 1e6 { return String(format: "%.1fM", value / 1e6) }
        if value >= 1e3 { return String(format: "%.1fk", value / 1e3) }
        if value == value.rounded() { return String(Int(value)) }
        return String(format: "%.2g", value)
    }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    }
}
