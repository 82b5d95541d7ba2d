import CInterop

/// The socket to one kernel child, and the receive buffer its replies land in. The one place the
/// oracle protocol's C functions are called (`cinterop_oracle_exchange`, `cinterop_oracle_close`).
final class KernelChannel {
    /// A reply, copied out of the receive buffer.
    struct Reply {
        var result: Int64
        var value: UInt64
        var status: UInt32
        var payload: [UInt8]
        /// A socket the child sent along (the reply to a fork).
        var descriptor: Int32?
    }

    /// Largest reply payload (the child's limit too).
    static let capacity = 1 << 20

    let descriptor: Int32
    /// The process at the other end (for error messages).
    let pid: Int32
    private let buffer: UnsafeMutableRawBufferPointer
    private var closed = false

    init(descriptor: Int32, pid: Int32) {
        self.descriptor = descriptor
        self.pid = pid
        buffer = .allocate(byteCount: Self.capacity, alignment: 16)
    }

    deinit {
        close()
        buffer.deallocate()
    }

    /// Closes the socket (idempotent). The child exits when it reads EOF.
    func close() {
        if closed { return }
        closed = true
        Self.close(descriptor)
    }

    /// Closes a socket no channel owns (one that arrived with a failed fork's reply).
    static func close(_ descriptor: Int32) { cinterop_oracle_close(descriptor) }

    /// Sends `command` with `arguments` (up to 7) and `payload` words; returns the reply.
    func exchange(_ command: Int32, _ arguments: [UInt64] = [], payload: [UInt64] = []) throws(OracleError) -> Reply {
        if closed { throw .childLost(pid: pid, errno: 9) }
        var request = cinterop_oracle_request()
        request.command = UInt32(command)
        request.payload_length = UInt32(payload.count * 8)
        withUnsafeMutableBytes(of: &request.arguments) { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for (index, argument) in arguments.prefix(7).enumerated() { words[index] = argument }
        }
        var reply = cinterop_oracle_reply()
        var received: Int32 = -1
        let status = payload.withUnsafeBytes { bytes in
            cinterop_oracle_exchange(
                descriptor, &request, bytes.baseAddress, &reply, buffer.baseAddress, buffer.count, &received)
        }
        if status != 0 { throw .childLost(pid: pid, errno: status) }
        let payloadBytes = Array(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(reply.payload_length)]))
        return Reply(
            result: reply.result, value: reply.value, status: reply.status, payload: payloadBytes,
            descriptor: received >= 0 ? received : nil)
    }
}
