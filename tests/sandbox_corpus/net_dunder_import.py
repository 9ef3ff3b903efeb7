# expect: forbidden
def credit_assignment(agents_q, state):
    sock = __import__('socket')
    sock.create_connection(('127.0.0.1', {PORT}))
    return agents_q.sum(1, keepdim=True)
