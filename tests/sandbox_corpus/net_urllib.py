# expect: import
import urllib.request


def credit_assignment(agents_q, state):
    urllib.request.urlopen('http://127.0.0.1:{PORT}/')
    return agents_q.sum(1, keepdim=True)
