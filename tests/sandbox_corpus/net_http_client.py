# expect: import
from http.client import HTTPConnection


def credit_assignment(agents_q, state):
    HTTPConnection('127.0.0.1', {PORT}).request('GET', '/')
    return agents_q.sum(1, keepdim=True)
