import setuptools

setuptools.setup(
    name='compute-agent',
    version='0.1.0',
    description='Node agent for KVM clouds: boots and deletes instances over oslo.messaging RPC',
    packages=setuptools.find_packages(exclude=['tests', 'tests.*']),
    python_requires='>=3.11',
    install_requires=[line.strip() for line in open('requirements.txt')
                      if line.strip() and not line.startswith('#')],
    entry_points={
        'console_scripts': [
            'compute-agent = agent.cmd.agent:main',
            'compute-conductor = agent.cmd.conductor:main',
            'compute-ctl = agent.cmd.ctl:main',
        ],
        'oslo.config.opts': [
            'compute-agent = agent.conf.opts:list_opts',
        ],
    },
)
