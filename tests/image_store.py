"""An image store for the tests: an HTTP server on loopback, in the test process.

``/HOW/NAME`` serves ``images[NAME]``: HOW ``img`` as it is; ``slow`` in 64 KiB pieces,
stopping half-way (``halfway`` set) until ``resume`` is set; ``truncated`` half of it (the
length announced in full); ``long`` more than it, with no length; ``stall`` the headers, then
nothing until ``resume``; ``redirect`` a 302 to its ``img`` URL; anything else 404.
``gate`` holds every answer until it is set; ``requests`` lists the paths asked for.
"""
import hashlib
import http.server
import threading


class Store(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(('127.0.0.1', 0), _Handler)
        self.images: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.asked = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.halfway = threading.Event()
        self.resume = threading.Event()

    @property
    def base(self) -> str:
        return 'http://127.0.0.1:%d/' % self.server_address[1]

    def add(self, name: str, data: bytes, how: str = 'img') -> dict:
        """Serve ``data`` as ``name``; its image_ref (URL by ``how``, sha256, size)."""
        self.images[name] = data
        return {'url': '%s%s/%s' % (self.base, how, name),
                'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data)}

    def start(self) -> 'Store':
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.gate.set()
        self.resume.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        store = self.server
        with store.asked:
            store.requests.append(self.path)
            store.asked.notify_all()
        store.gate.wait(120)
        _, how, name = self.path.split('/', 2)
        data = store.images.get(name)
        if how == 'redirect':
            self.send_response(302)
            self.send_header('Location', store.base + 'img/' + name)
            self.end_headers()
            return
        if data is None or how not in ('img', 'slow', 'truncated', 'long', 'stall'):
            self.send_error(404)
            return
        self.send_response(200)
        if how != 'long':
            self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if how == 'img':
            self.wfile.write(data)
        elif how == 'slow':
            for off in range(0, len(data), 64 * 1024):
                if off == len(data) // 2:
                    store.halfway.set()
                    store.resume.wait(120)
                self.wfile.write(data[off:off + 64 * 1024])
                self.wfile.flush()
        elif how == 'truncated':
            self.wfile.write(data[:len(data) // 2])
        elif how == 'long':
            self.wfile.write(data + b'\0' * 4096)
        elif how == 'stall':
            self.wfile.flush()
            store.resume.wait(120)
        self.close_connection = True
