import Foundation

/// A small line chart as a standalone SVG file: one or more series of (x, y) points, linear or
/// logarithmic x axis, labelled axes and ticks. Enough to read a sweep at a glance.
struct SVGPlot {
    struct Series {
        var name: String
        var points: [(x: Double, y: Double)]
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series]
    var logarithmicX = false

    private let width = 720.0
    private let height = 440.0
    private let left = 80.0
    private let right = 160.0
    private let top = 50.0
    private let bottom = 60.0
    private static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

    init(title: String, xLabel: String, yLabel: String, series: [Series], logarithmicX: Bool = false) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
        self.logarithmicX = logarithmicX
    }

    func render() -> String {
        let all = series.flatMap(\.points)
        let xs = all.map { transformX($0.x) }
        let minX = xs.min() ?? 0
        let maxX = max(xs.max() ?? 1, minX + 1e-9)
        let maxY = niceCeiling((all.map(\.y).max() ?? 1) * 1.05)
        let plotWidth = width - left - right
        let plotHeight = height - top - bottom
        func px(_ x: Double) -> Double { left + (transformX(x) - minX) / (maxX - minX) * plotWidth }
        func py(_ y: Double) -> Double { top + plotHeight - y / maxY * plotHeight }

        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="24" text-anchor="middle" font-size="16">\(escape(title))</text>

            """
        // Y grid and ticks.
        for step in 0...5 {
            let value = maxY * Double(step) / 5
            let y = py(value)
            svg += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotWidth)\" y2=\"\(y)\" stroke=\"#ddd\"/>\n"
            svg += "<text x=\"\(left - 8)\" y=\"\(y + 4)\" text-anchor=\"end\">\(format(value))</text>\n"
        }
        // X ticks at the data points of the first series.
        let ticks = Array(Set(all.map(\.x))).sorted()
        for x in ticks {
            let position = px(x)
            svg += "<line x1=\"\(position)\" y1=\"\(top + plotHeight)\" x2=\"\(position)\" y2=\"\(top + plotHeight + 5)\" stroke=\"#333\"/>\n"
            svg += "<text x=\"\(position)\" y=\"\(top + plotHeight + 20)\" text-anchor=\"middle\">\(format(x))</text>\n"
        }
        svg += "<line x1=\"\(left)\" y1=\"\(top + plotHeight)\" x2=\"\(left + plotWidth)\" y2=\"\(top + plotHeight)\" stroke=\"#333\"/>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotHeight)\" stroke=\"#333\"/>\n"
        svg += "<text x=\"\(left + plotWidth / 2)\" y=\"\(height - 18)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        svg += "<text transform=\"translate(20 \(top + plotHeight / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (index, line) in series.enumerated() {
            let color = Self.colors[index % Self.colors.count]
            let path = line.points.map { "\(px($0.x)),\(py($0.y))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            for point in line.points {
                svg += "<circle cx=\"\(px(point.x))\" cy=\"\(py(point.y))\" r=\"3\" fill=\"\(color)\"/>\n"
            }
            let legendY = top + 10 + Double(index) * 20
            svg += "<rect x=\"\(left + plotWidth + 15)\" y=\"\(legendY - 9)\" width=\"12\" height=\"12\" fill=\"\(color)\"/>\n"
            svg += "<text x=\"\(left + plotWidth + 32)\" y=\"\(legendY + 1)\">\(escape(line.name))</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    private func transformX(_ x: Double) -> Double { logarithmicX ? log2(max(x, 0) + 1) : x }

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
