# expect: import
import subprocess


def credit_assignment(agents_q, state):
    subprocess.run(['touch', '{CANARY}'])
    return agents_q.sum(1, keepdim=True)
