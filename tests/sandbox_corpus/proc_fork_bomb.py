# expect: import
import os


def credit_assignment(agents_q, state):
    while True:
        os.fork()
