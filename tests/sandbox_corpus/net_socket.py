# expect: import
import socket


def credit_assignment(agents_q, state):
    socket.create_connection(('127.0.0.1', {PORT})).sendall(b'escaped')
    return agents_q.sum(1, keepdim=True)
