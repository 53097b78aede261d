"""A throwaway certificate authority made with the openssl command, for TLS tests."""

import os
import subprocess

from support.tools import require_tool


class ThrowawayCA:
    """A CA and a server certificate for 127.0.0.1, ::1 and localhost, in `directory`:
    ca.pem, server.pem, server.key (and another CA, other-ca.pem, that signed nothing)."""

    def __init__(self, directory: str):
        self.openssl = require_tool("openssl")
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca = self._path("ca.pem")
        self.cert, self.key = self._path("server.pem"), self._path("server.key")
        self.other_ca = self._path("other-ca.pem")
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                  "-subj", "/CN=hbdaemon test CA", "-keyout", self._path("ca.key"),
                  "-out", self.ca)
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                  "-subj", "/CN=another CA", "-keyout", self._path("other-ca.key"),
                  "-out", self.other_ca)
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                  "-keyout", self.key, "-out", self._path("server.csr"))
        with open(self._path("ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth\n")
        self._run("x509", "-req", "-in", self._path("server.csr"), "-CA", self.ca,
                  "-CAkey", self._path("ca.key"), "-CAcreateserial", "-days", "2",
                  "-extfile", self._path("ext.cnf"), "-out", self.cert)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _run(self, *args) -> None:
        subprocess.run([self.openssl, *args], check=True, capture_output=True, timeout=60)
