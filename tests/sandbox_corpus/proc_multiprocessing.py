# expect: import
import multiprocessing


def credit_assignment(agents_q, state):
    multiprocessing.Process(target=print).start()
    return agents_q.sum(1, keepdim=True)
